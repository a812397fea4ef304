""":class:`RedisNode`: a node on a redis-py asyncio client, for deployments that
need what redis-py offers (its connection pool, Sentinel or cluster clients,
custom connection classes). Each request is a task on the client, under the
per-node timeout.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError

from ._errors import ConfigurationError
from ._node import ServerFacts, submit_as_task
from ._url import describe_client, describe_url

if TYPE_CHECKING:
    import asyncio

    from redis.asyncio.connection import AbstractConnection

    from ._commands import Command
    from ._node import OnDone

logger = logging.getLogger("redlock_aio")

#: Connections per node when the library creates the client. Waiters queue for a
#: free connection (bounded by the per-node timeout) instead of failing with
#: redis-py's "Too many connections".
MAX_CONNECTIONS = 64


class RedisNode:
    """A :class:`~redlock_aio.Node` on a redis-py asyncio client.

    Scripts run by EVALSHA, and are loaded again after NOSCRIPT (a ``SCRIPT
    FLUSH`` or a restart). The per-node timeout counts from when the request
    starts (after the request it is ordered after), the wait for a pooled
    connection included.

    :param client: the client to use.
    :param owned: close the client in :meth:`aclose` (true when the library made it).
    """

    __slots__ = ("client", "facts", "identity", "name", "owned")

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

    def submit(
        self,
        command: Command,
        *,
        timeout: float,
        after: asyncio.Future[object] | None = None,
        on_done: OnDone | None = None,
        not_after: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> asyncio.Future[object]:
        return submit_as_task(
            self._execute,
            command,
            timeout=timeout,
            after=after,
            on_done=on_done,
            not_after=not_after,
            loop=loop,
        )

    async def _execute(self, command: Command) -> object:
        client = self.client
        try:
            return await client.execute_command(*command.args)  # type: ignore[no-untyped-call]
        except NoScriptError:
            if command.script is None:
                raise
            await client.execute_command("SCRIPT", "LOAD", command.script)  # type: ignore[no-untyped-call]
            return await client.execute_command(*command.args)  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        if self.owned:
            await self.client.aclose()

    def __repr__(self) -> str:
        return f"RedisNode({self.name})"
