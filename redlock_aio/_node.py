"""The per-node seam: the :class:`Node` protocol and :class:`RedisNode`, the only
module that talks to redis-py.

A node does one request and answers yes or no; timeouts, retries and the quorum
are the caller's business. Other kinds of node (a lean multiplexed transport, a
Sentinel-managed master, an in-memory fake for tests) fit behind the same
protocol.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from . import _scripts
from ._errors import ConfigurationError

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Hashable, Sequence

    from redis.asyncio.connection import AbstractConnection

logger = logging.getLogger("redlock_aio")

#: URL schemes redis-py understands for a single node.
SCHEMES = ("redis", "rediss", "unix")

#: Connections per node when the library creates the client. Waiters queue for a
#: free connection (bounded by the per-node timeout) instead of failing with
#: redis-py's "Too many connections".
MAX_CONNECTIONS = 64


@runtime_checkable
class Node(Protocol):
    """One independent Redis (or Valkey) instance, as the algorithm sees it.

    :ivar name: a description for messages and logs; never contains a password.
    :ivar identity: equal for two handles on the same server and database, used
        to refuse the same node given twice.
    :ivar started_at: when the server started, on :func:`time.monotonic`, as
        learned on the latest connection; ``None`` if unknown. Drives the
        restart quarantine.
    """

    name: str
    identity: Hashable

    @property
    def started_at(self) -> float | None: ...

    async def set_nx(self, key: bytes, token: bytes, ttl_ms: int) -> bool:
        """``SET key token NX PX ttl_ms``: True if the key was set."""
        ...

    async def release(self, key: bytes, token: bytes, *, notify: bool = True) -> bool:
        """Delete the key if it holds ``token``: True if it was deleted. With
        ``notify``, announce it on the key's release channel."""
        ...

    async def extend(self, key: bytes, token: bytes, ttl_ms: int) -> bool:
        """Set the key's TTL if it holds ``token``: True if it was extended."""
        ...

    async def extend_many(
        self, items: Sequence[tuple[bytes, bytes, int]]
    ) -> list[bool]:
        """:meth:`extend` for many ``(key, token, ttl_ms)`` in one request."""
        ...

    async def aclose(self) -> None:
        """Release what the node holds (connections it opened itself)."""
        ...


@runtime_checkable
class Poster(Protocol):
    """A node that can write an encoded request at once and hand back its
    future, with no task (:class:`~redlock_aio._wire.MuxNode`). Rounds use this
    fast path where a node offers it, and the :class:`Node` methods elsewhere."""

    def post(
        self,
        payload: bytes,
        after: asyncio.Future[Any] | None = None,
        script: str | None = None,
        hook: Callable[[Any], None] | None = None,
    ) -> asyncio.Future[Any] | None:
        """Write ``payload`` (a RESP command) now, ordered after ``after``, and
        return the future of its raw reply; ``None`` if that cannot be done at
        once. ``script`` is loaded and the request written again on NOSCRIPT.
        ``hook(future)`` is called as soon as the future is done, in the same
        turn of the loop."""
        ...


def describe_url(url: str) -> tuple[str, Hashable]:
    """A password-free name and an identity for a node URL, or a
    :class:`ConfigurationError` that says what is wrong with it."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}")
        if scheme == "unix":
            if not parts.path:
                raise ValueError("a unix:// URL needs a socket path")
            return f"unix:{parts.path}", ("unix", parts.path, _db(parts.query))
        host = parts.hostname
        if not host:
            raise ValueError("no host")
        port = parts.port or 6379
        db = _db(parts.query, parts.path)
    except ValueError as exc:
        # The message of urlsplit's errors can echo the URL: rebuild it without.
        raise ConfigurationError(
            f"invalid node URL {_redact(url)!r}: {exc}; expected e.g. "
            "redis://[[user]:password@]host[:port][/db], rediss://... or "
            "unix:///path/to/redis.sock"
        ) from None
    name = f"{host}:{port}" if db == 0 else f"{host}:{port}/{db}"
    return name, ("tcp", host.lower(), port, db)


def _db(query: str, path: str = "") -> int:
    for item in query.split("&"):
        if item.startswith("db="):
            return int(item[3:])
    path = path.strip("/")
    return int(path) if path else 0


def _redact(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        return parts._replace(netloc=f"{user}:***@{netloc}").geturl()
    except ValueError:
        return "<unparsable URL>"


def describe_client(client: Redis) -> tuple[str, Hashable]:
    """A password-free name and an identity for a redis-py client."""
    kwargs: dict[str, Any] = client.connection_pool.connection_kwargs
    db = int(kwargs.get("db", 0) or 0)
    path = kwargs.get("path")
    if path:
        return f"unix:{path}", ("unix", str(path), db)
    host = str(kwargs.get("host", "localhost"))
    port = int(kwargs.get("port", 6379))
    name = f"{host}:{port}" if db == 0 else f"{host}:{port}/{db}"
    return name, ("tcp", host.lower(), port, db)


class ServerFacts:
    """What a node's server says about itself on each new connection: when it
    started (for the restart quarantine: a server that restarted without its
    keys may grant a lock that is still held) and whether it may evict keys.

    Shared by every transport: feed it ``INFO server`` and, once,
    ``CONFIG GET maxmemory-policy``.
    """

    __slots__ = ("eviction_checked", "name", "run_id", "started_at")

    def __init__(self, name: str) -> None:
        self.name = name
        self.run_id: str | None = None
        self.started_at: float | None = None
        self.eviction_checked = False

    def saw_info(self, info: bytes | str) -> None:
        """Record ``INFO server``'s uptime and run id, read just now."""
        now = time.monotonic()
        fields = parse_info(info)
        try:
            uptime = float(fields["uptime_in_seconds"])
        except (KeyError, ValueError):
            return
        run_id = fields.get("run_id")
        if self.run_id is not None and run_id != self.run_id:
            logger.warning(
                "node %s restarted %.0f s ago (new run id): it may have lost lock "
                "keys, so its votes do not count until the restart quarantine is over",
                self.name,
                uptime,
            )
        self.run_id = run_id
        # uptime_in_seconds is rounded down: assume the latest possible start.
        self.started_at = now - uptime

    def saw_eviction_policy(self, reply: object) -> None:
        """Warn once if the server may evict keys (and so drop a lock)."""
        self.eviction_checked = True
        # redis-py answers CONFIG GET with a dict; a bare reply is a flat list.
        if isinstance(reply, dict):
            values = list(reply.values())
        elif isinstance(reply, (list, tuple)):
            values = list(reply[1::2])
        else:
            return
        if not values:
            return
        value = values[0]
        policy = value.decode() if isinstance(value, bytes) else str(value)
        if policy != "noeviction":
            logger.warning(
                "node %s has maxmemory-policy %s: under memory pressure it may evict "
                "lock keys and grant a held lock again; use noeviction",
                self.name,
                policy,
            )


def parse_info(info: bytes | str) -> dict[str, str]:
    """``INFO`` text as a dict of its ``key:value`` lines."""
    text = info.decode(errors="replace") if isinstance(info, bytes) else info
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            fields[key.strip()] = value.strip()
    return fields


class RedisNode:
    """A :class:`Node` on a redis-py asyncio client.

    Scripts run by EVALSHA through redis-py's ``Script`` helper, which loads them
    again transparently after NOSCRIPT (a ``SCRIPT FLUSH`` or a restart).

    :param client: the client to use.
    :param owned: close the client in :meth:`aclose` (true when the library made it).
    """

    __slots__ = (
        "_extend",
        "_extend_many",
        "_release",
        "_release_quiet",
        "client",
        "facts",
        "identity",
        "name",
        "owned",
    )

    def __init__(self, client: Redis, *, owned: bool = False) -> None:
        self.client = client
        self.owned = owned
        self.name, self.identity = describe_client(client)
        self.facts = ServerFacts(self.name)
        self._release = client.register_script(_scripts.RELEASE)
        self._release_quiet = client.register_script(_scripts.RELEASE_QUIET)
        self._extend = client.register_script(_scripts.EXTEND)
        self._extend_many = client.register_script(_scripts.EXTEND_MANY)
        # Learn the server's start time on every new connection: a restart
        # always breaks the connections, so this sees every restart. A pool
        # that already has its own connect hook is left alone.
        kwargs = client.connection_pool.connection_kwargs
        if kwargs.get("redis_connect_func") is None:
            kwargs["redis_connect_func"] = self._on_connect

    @property
    def started_at(self) -> float | None:
        return self.facts.started_at

    async def _on_connect(self, conn: AbstractConnection) -> None:
        await conn.on_connect()
        try:
            await conn.send_command("INFO", "server")
            self.facts.saw_info(await conn.read_response())
            if not self.facts.eviction_checked:
                await conn.send_command("CONFIG", "GET", "maxmemory-policy")
                self.facts.saw_eviction_policy(await conn.read_response())
        except ResponseError as exc:  # INFO or CONFIG renamed or denied by ACL
            self.facts.eviction_checked = True
            logger.debug("node %s: cannot read server facts: %s", self.name, exc)

    @classmethod
    def from_url(cls, url: str) -> RedisNode:
        """A node with its own client and connection pool for ``url``.

        redis-py's own retries are switched off: a failure is a vote against,
        and the retry policy belongs to the algorithm.
        """
        name, identity = describe_url(url)
        try:
            pool = BlockingConnectionPool.from_url(
                url,
                max_connections=MAX_CONNECTIONS,
                timeout=None,
                retry=Retry(NoBackoff(), 0),
            )
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"invalid node URL for {name}: {exc}") from None
        node = cls(Redis.from_pool(pool), owned=True)
        node.name, node.identity = name, identity
        node.facts.name = name
        return node

    async def set_nx(self, key: bytes, token: bytes, ttl_ms: int) -> bool:
        reply = await self.client.execute_command(  # type: ignore[no-untyped-call]
            "SET", key, token, "NX", "PX", ttl_ms
        )
        return bool(reply)

    async def release(self, key: bytes, token: bytes, *, notify: bool = True) -> bool:
        script = self._release if notify else self._release_quiet
        return bool(await script(keys=(key,), args=(token,)))

    async def extend(self, key: bytes, token: bytes, ttl_ms: int) -> bool:
        return bool(await self._extend(keys=(key,), args=(token, ttl_ms)))

    async def extend_many(
        self, items: Sequence[tuple[bytes, bytes, int]]
    ) -> list[bool]:
        keys = [key for key, _, _ in items]
        args = [a for _, token, ttl_ms in items for a in (token, ttl_ms)]
        reply = await self._extend_many(keys=keys, args=args)
        return [bool(r) for r in reply]

    async def aclose(self) -> None:
        if self.owned:
            await self.client.aclose()

    def __repr__(self) -> str:
        return f"RedisNode({self.name})"
