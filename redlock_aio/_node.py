"""The per-node seam: the :class:`Node` protocol and :class:`RedisNode`, the only
module that talks to redis-py.

A node does one request and answers yes or no; timeouts, retries and the quorum
are the caller's business. Other kinds of node (a lean multiplexed transport, a
Sentinel-managed master, an in-memory fake for tests) fit behind the same
protocol.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import parse_qs, unquote_plus, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from . import _scripts
from ._errors import ConfigurationError

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Hashable, Sequence
    from urllib.parse import SplitResult

    from redis.asyncio.connection import AbstractConnection

logger = logging.getLogger("redlock_aio")

#: URL schemes redis-py understands for a single node.
SCHEMES = ("redis", "rediss", "unix")
#: The port of a URL that gives none.
DEFAULT_PORT = 6379
#: The largest database number a server can have (``databases`` is an int).
MAX_DB = 2**31 - 1
#: The names of this machine's loopback address, one server for the check that
#: no node is given twice.
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})

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
    """

    name: str
    identity: Hashable

    async def set_nx(self, key: bytes, token: bytes, ttl_ms: int) -> bool:
        """``SET key token NX PX ttl_ms``: True if the key was set."""
        ...

    async def acquire(
        self, key: bytes, token: bytes, ttl_ms: int, marker: bytes, quarantine_ms: int
    ) -> object:
        """:data:`~redlock_aio._scripts.ACQUIRE`: ``SET key token NX PX ttl_ms``
        and the check of the node's ``marker`` in one call; its raw reply."""
        ...

    async def init_marker(self, marker: bytes) -> None:
        """Set the node's ``marker`` to "0": it holds every lock key of its
        prefix, and has never lost one (see ``AsyncRedlock.init_nodes``)."""
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
        _check_encodable(url)
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}")
        if scheme == "unix":
            if not parts.path:
                raise ValueError("a unix:// URL needs a socket path")
            return f"unix:{parts.path}", ("unix", parts.path, url_db(parts))
        host = parts.hostname
        if not host:
            raise ValueError("no host")
        port = url_port(parts)
        db = url_db(parts)
    except ValueError as exc:
        # The message of urlsplit's errors can echo the URL: rebuild it without.
        raise ConfigurationError(
            f"invalid node URL {_redact(url)!r}: {exc}; expected e.g. "
            "redis://[[user]:password@]host[:port][/db], rediss://... or "
            "unix:///path/to/redis.sock"
        ) from None
    name = f"{host}:{port}" if db == 0 else f"{host}:{port}/{db}"
    return name, ("tcp", host_identity(host), port, db)


def _check_encodable(url: str) -> None:
    """``ValueError`` if ``url`` cannot be UTF-8 encoded: its host, path, user,
    password or client name must go to the server or the OS as bytes."""
    try:
        url.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"character {exc.start} is a lone surrogate, which has no UTF-8 encoding"
        ) from None


def url_port(parts: SplitResult) -> int:
    """The port of a TCP node URL, 6379 if it has none; ``ValueError`` if it is
    not one a server can listen on."""
    port = parts.port  # ValueError if not a number in 0-65535
    if port is None:
        return DEFAULT_PORT
    if port == 0:
        raise ValueError(
            f"port 0 is no server's port: give one in 1-65535, or none for "
            f"{DEFAULT_PORT}"
        )
    return port


def url_db(parts: SplitResult) -> int:
    """The database of a node URL: its path (TCP only) or ``?db=``, 0 if neither;
    ``ValueError`` if one is not a database number, or they disagree."""
    given = parse_qs(parts.query).get("db", [])
    path = parts.path.strip("/")
    if path and parts.scheme.lower() != "unix":
        given.insert(0, path)
    dbs = {_db_number(text) for text in given}
    if len(dbs) > 1:
        raise ValueError(
            f"the db is given more than once, as {' and '.join(map(str, sorted(dbs)))}"
            ": give it once, in the path or as ?db="
        )
    return dbs.pop() if dbs else 0


def _db_number(text: str) -> int:
    if text.isascii() and text.isdigit() and len(text) <= 10:
        db = int(text)
        if db <= MAX_DB:
            return db
    raise ValueError(f"db must be a whole number from 0 to {MAX_DB}, got {text!r}")


def host_identity(host: str) -> str:
    """The host part of a node's identity: lowercased, without IPv6 brackets,
    and one name for each spelling of the loopback address, so that
    ``localhost`` and ``127.0.0.1`` are seen as the same server (no DNS lookup:
    the constructor does no I/O)."""
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return "localhost" if host in _LOOPBACK else host


def _redact(url: str) -> str:
    """The URL as a message may show it: the user info (all up to the last
    ``@``, since a password may hold an unescaped ``/``, ``?`` or ``#``) and the
    value of any ``password=`` item replaced by ``***``, and no fragment."""
    at = url.rfind("@")
    if at >= 0:
        slashes = url.find("//", 0, at)
        start = slashes + 2 if slashes >= 0 else 0
        url = f"{url[:start]}***{url[at:]}"
    items = re.split(r"([?&])", url.split("#", 1)[0])
    return "".join(map(_hide_password, items))


def _hide_password(item: str) -> str:
    """A query item with its value hidden if its key (as parse_qs reads it)
    names a password."""
    key, sep, _ = item.partition("=")
    if sep and "password" in unquote_plus(key).lower():
        return f"{key}=***"
    return item


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
    return name, ("tcp", host_identity(host), port, db)


class ServerFacts:
    """What a node's server says about itself: whether it may evict keys (and
    so drop a lock). Shared by every transport: feed it, once,
    ``CONFIG GET maxmemory-policy``.

    (Data loss, for the restart quarantine, is told by the node's marker key,
    checked in the acquire script itself: see :data:`~redlock_aio._scripts.ACQUIRE`.)
    """

    __slots__ = ("eviction_checked", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.eviction_checked = False

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


class RedisNode:
    """A :class:`Node` on a redis-py asyncio client.

    Scripts run by EVALSHA through redis-py's ``Script`` helper, which loads them
    again transparently after NOSCRIPT (a ``SCRIPT FLUSH`` or a restart).

    :param client: the client to use.
    :param owned: close the client in :meth:`aclose` (true when the library made it).
    """

    __slots__ = (
        "_acquire",
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
        pool = client.connection_pool
        if not owned and not isinstance(pool, BlockingConnectionPool):
            logger.warning(
                "node %s: its redis-py pool fails requests beyond %s connections "
                "(MaxConnectionsError), a release included; pass a client on "
                "BlockingConnectionPool(max_connections=..., timeout=None), whose "
                "requests wait for a connection (bounded by the per-node timeout)",
                self.name,
                pool.max_connections,
            )
        self._acquire = client.register_script(_scripts.ACQUIRE)
        self._release = client.register_script(_scripts.RELEASE)
        self._release_quiet = client.register_script(_scripts.RELEASE_QUIET)
        self._extend = client.register_script(_scripts.EXTEND)
        self._extend_many = client.register_script(_scripts.EXTEND_MANY)
        # Check the eviction policy on the first connection. A pool that
        # already has its own connect hook is left alone.
        kwargs = client.connection_pool.connection_kwargs
        if kwargs.get("redis_connect_func") is None:
            kwargs["redis_connect_func"] = self._on_connect

    async def _on_connect(self, conn: AbstractConnection) -> None:
        await conn.on_connect()
        if self.facts.eviction_checked:
            return
        try:
            await conn.send_command("CONFIG", "GET", "maxmemory-policy")
            self.facts.saw_eviction_policy(await conn.read_response())
        except ResponseError as exc:  # CONFIG renamed or denied by ACL
            self.facts.eviction_checked = True
            logger.debug("node %s: cannot read maxmemory-policy: %s", self.name, exc)

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

    async def acquire(
        self, key: bytes, token: bytes, ttl_ms: int, marker: bytes, quarantine_ms: int
    ) -> object:
        return await self._acquire(
            keys=(key, marker), args=(token, ttl_ms, quarantine_ms)
        )

    async def init_marker(self, marker: bytes) -> None:
        await self.client.set(marker, b"0")

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
