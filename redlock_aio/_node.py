"""The node seam: :class:`Node`, the one thing the algorithm asks of a Redis (or
Valkey) instance, and what every transport shares.

A node takes a :class:`~._commands.Command` and hands back, at once, the future
of its raw reply; it owns the request's timeout (from when the request was
really written, with grace for a connection still busy answering this client's
own backlog) and its connection. Votes, quorums and retries are the caller's
business. Transports: :class:`~._mux.MuxNode` (one pipelined connection, the
default), :class:`~._redis_py.RedisNode` (a redis-py client), and the test
kit's in-memory node; a Sentinel- or Cluster-backed node fits the same way.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Protocol, TypeAlias, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Hashable

    from ._commands import Command

logger = logging.getLogger("redlock_aio")

#: Called with a request's future as soon as it is done, in the same turn of
#: the event loop (a done callback would run one turn later).
OnDone: TypeAlias = "Callable[[asyncio.Future[object]], None]"


@runtime_checkable
class Node(Protocol):
    """One independent Redis (or Valkey) instance, as the algorithm sees it.

    :ivar name: a description for messages and logs; never contains a password.
    :ivar identity: equal for two handles on the same server and database, used
        to refuse the same node given twice.
    """

    @property
    def name(self) -> str: ...

    @property
    def identity(self) -> Hashable: ...

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
        """Send ``command`` and return the future of its raw reply, at once
        (no await: requests to every node go out in the same turn).

        :param timeout: seconds the node gets, counted from when the request
            is written; the future then fails with :class:`TimeoutError`. A
            node still streaming replies to earlier requests of this client
            may get more (a backlog is not a failure).
        :param after: the future of an earlier request of the same lock on
            this node: this one is answered after it (a release never
            overtakes a late ``SET``).
        :param on_done: called once the future is done, with that very future
            (the one returned here: a round finds its request by it).
        :param not_after: an event-loop time after which the request fails
            whatever the backlog (an extension cannot count after the lock's
            deadline).
        :param loop: the running event loop, if the caller has it at hand (a
            round does): spares looking it up, a system call per request on
            Python 3.11. A node that has no use for it ignores it.

        Failures (connection, error replies) fail the future with the
        exception; cancelling the future abandons the request.
        """
        ...

    async def aclose(self) -> None:
        """Release what the node holds (connections it opened itself)."""
        ...


def submit_as_task(
    execute: Callable[[Command], Awaitable[object]],
    command: Command,
    *,
    timeout: float,
    after: asyncio.Future[object] | None,
    on_done: OnDone | None,
    not_after: float | None,
    loop: asyncio.AbstractEventLoop | None,
) -> asyncio.Future[object]:
    """:meth:`Node.submit` for a node whose requests are coroutines
    (``execute(command)``): one task, which waits for ``after``, then runs the
    request under ``timeout`` (never past ``not_after``)."""
    if loop is None:
        loop = asyncio.get_running_loop()
    if not_after is not None:
        timeout = min(timeout, max(0.0, not_after - loop.time()))
    task: asyncio.Task[object] = loop.create_task(
        _run(execute, command, timeout, after)
    )
    if on_done is not None:
        task.add_done_callback(on_done)
    return task


async def _run(
    execute: Callable[[Command], Awaitable[object]],
    command: Command,
    timeout: float,
    after: asyncio.Future[object] | None,
) -> object:
    if after is not None and not after.done():
        # asyncio.wait never cancels ``after``, even if this task is cancelled.
        await asyncio.wait((after,))
    try:
        return await asyncio.wait_for(
            execute(command), None if math.isinf(timeout) else timeout
        )
    except asyncio.TimeoutError:  # not TimeoutError on 3.10
        raise TimeoutError(f"no reply within {timeout * 1000:.0f} ms") from None


#: Called with each message's data on a subscribed channel.
Callback: TypeAlias = "Callable[[bytes], None]"


@runtime_checkable
class Notifier(Protocol):
    """A node that can tell when a key's release channel fires."""

    async def subscribe(self, channel: bytes, callback: Callback) -> None:
        """Call ``callback(data)`` on every message on ``channel``; returns once
        the server confirmed the subscription."""
        ...

    def unsubscribe(self, channel: bytes, callback: Callback) -> None:
        """Stop calling ``callback``; does not wait."""
        ...


class ServerFacts:
    """What a node's server says about itself: whether it may evict keys (and
    so drop a lock). Shared by every transport: feed it, once,
    ``CONFIG GET maxmemory-policy``.

    (Data loss, for the restart quarantine, is told by the node's marker key,
    checked in the acquire script itself: see :data:`~._scripts.ACQUIRE`.)
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
