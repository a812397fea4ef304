"""One round: the same request to every node at once, each under its own timeout.

The caller wakes as soon as the vote is decided (a quorum said yes, or a quorum
is out of reach), not when the slowest node answers. Requests still in flight
go on as tasks, each cancelled at its deadline, so a hung node costs at most the
per-node timeout and none of it once a majority has answered.

Each request on a node can be chained after the previous request of the same
lock on that node (``after``): a release then never overtakes a late ``SET`` or
``PEXPIRE``, so a key that lands late is still deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from functools import partial
from typing import Any, TypeAlias

import anyio

from ._errors import NodeError
from ._node import Node
from ._quorum import Decision, NodeOutcome, Tally, Vote

Request: TypeAlias = Callable[[Node], Awaitable[bool]]
#: Says why a node's yes must not count (None: it counts).
Vet: TypeAlias = Callable[[Node], "str | None"]
Spawn: TypeAlias = Callable[[Coroutine[Any, Any, bool]], "asyncio.Task[bool]"]


#: Votes that are answers from the node (not errors, timeouts or pending).
_ANSWERS = (Vote.YES, Vote.NO, Vote.QUARANTINED)


class Round:
    """Send ``request`` to every node now; :attr:`decided` resolves once the
    outcome is known.

    :param nodes: the nodes, in a fixed order.
    :param request: what to ask each node; returns its yes or no.
    :param timeout: seconds each node gets, counted from now (including the
        wait for the request it is chained after).
    :param needed: yes votes that make the outcome a success.
    :param wait_all: resolve once every node has answered or timed out, and
        not at quorum; with ``required``, once the required nodes have, if
        ``needed`` nodes answered at all (yes or no), else once every node has.
    :param required: with ``wait_all``, the nodes to wait for (the others go on
        in the background: a release need not wait for a node that was slow).
    :param after: per node, a task this request must wait for first.
    :param spawn: creates the per-node tasks (the owner tracks them, so that
        none outlives the client).
    :param vet: checked on each yes; a reason turns it into a
        :attr:`Vote.QUARANTINED` that does not count.
    """

    __slots__ = (
        "_answered",
        "_expired",
        "_required",
        "_timers",
        "_unsettled",
        "_vet",
        "decided",
        "outcomes",
        "tally",
        "tasks",
    )

    def __init__(
        self,
        nodes: Sequence[Node],
        request: Request,
        *,
        timeout: float,
        needed: int,
        spawn: Spawn,
        wait_all: bool = False,
        after: Sequence[asyncio.Task[bool] | None] | None = None,
        vet: Vet | None = None,
        required: Sequence[bool] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._vet = vet
        n = len(nodes)
        self._required = required
        self._unsettled = n if required is None else sum(required)
        self._answered = 0
        self.tally = Tally(n, needed)
        self.decided: asyncio.Future[Decision] = loop.create_future()
        self.outcomes: list[NodeOutcome] = [
            NodeOutcome(node.name, Vote.PENDING) for node in nodes
        ]
        self._expired = [False] * n
        self.tasks: list[asyncio.Task[bool]] = []
        self._timers: list[asyncio.TimerHandle] = []
        timeout = max(timeout, 0.0)
        for i, node in enumerate(nodes):
            prev = after[i] if after is not None else None
            task = spawn(_ask(node, request, prev))
            self.tasks.append(task)
            self._timers.append(loop.call_later(timeout, self._expire, i))
            task.add_done_callback(partial(self._on_done, i, node, timeout, wait_all))

    def _expire(self, i: int) -> None:
        # One more turn of the loop: after a stall, the reply may already have
        # been read, its task scheduled to resume just behind this timer.
        asyncio.get_running_loop().call_soon(self._expire_now, i)

    def _expire_now(self, i: int) -> None:
        task = self.tasks[i]
        if not task.done():
            self._expired[i] = True
            task.cancel()

    def _on_done(
        self,
        i: int,
        node: Node,
        timeout: float,
        wait_all: bool,
        task: asyncio.Task[bool],
    ) -> None:
        self._timers[i].cancel()
        if task.cancelled():
            if self._expired[i]:
                err = NodeError(node.name, f"no reply within {timeout * 1000:.0f} ms")
                err.__cause__ = TimeoutError()
                outcome = NodeOutcome(node.name, Vote.TIMEOUT, err)
            else:
                err = NodeError(node.name, "request cancelled (client closing)")
                outcome = NodeOutcome(node.name, Vote.ERROR, err)
        else:
            exc = task.exception()
            if exc is None:
                outcome = self._vote(node, task.result())
            else:
                err = NodeError(node.name, f"{type(exc).__name__}: {exc}")
                err.__cause__ = exc
                outcome = NodeOutcome(node.name, Vote.ERROR, err)
        self.outcomes[i] = outcome
        decision = self.tally.add(outcome.ok)
        if outcome.vote in _ANSWERS:
            self._answered += 1
        if self._required is None or self._required[i]:
            self._unsettled -= 1
        if self.decided.done():
            return
        if wait_all:
            tally = self.tally
            if tally.yes + tally.no == len(self.tasks) or (
                self._unsettled <= 0 and self._answered >= tally.needed
            ):
                self.decided.set_result(decision)
        elif decision is not Decision.PENDING:
            self.decided.set_result(decision)

    def _vote(self, node: Node, yes: bool) -> NodeOutcome:
        if not yes:
            return NodeOutcome(node.name, Vote.NO)
        why = None if self._vet is None else self._vet(node)
        if why is None:
            return NodeOutcome(node.name, Vote.YES)
        return NodeOutcome(node.name, Vote.QUARANTINED, NodeError(node.name, why))


async def _ask(node: Node, request: Request, prev: asyncio.Task[bool] | None) -> bool:
    if prev is not None and not prev.done():
        # asyncio.wait never cancels prev, even if this task is cancelled.
        await asyncio.wait((prev,))
    return await request(node)


async def wait_shielded(fut: asyncio.Future[Decision]) -> Decision:
    """Wait for ``fut``, which settles by itself within a bound (the per-node
    timeout), even if the caller is cancelled meanwhile; then re-raise that
    cancellation. This is how release and the cleanup of a failed or cancelled
    acquire finish their work before a cancellation propagates.
    """
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError as first:
        cancelled = first
    # A cancelled anyio scope re-delivers its cancellation at every await:
    # shield this task from it until fut settles.
    with anyio.CancelScope(shield=True):
        while not fut.done():
            try:
                await asyncio.shield(fut)
            except asyncio.CancelledError as exc:
                cancelled = exc
    raise cancelled


async def wait_tasks_shielded(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Wait, shielded as :func:`wait_shielded`, until every task has ended."""
    pending = [t for t in tasks if not t.done()]
    if pending:
        await wait_shielded(_all_done(pending))


def _all_done(tasks: Sequence[asyncio.Task[Any]]) -> asyncio.Future[Decision]:
    """A future that resolves when every task has ended, whatever their result."""
    fut: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
    left = len(tasks)

    def done(_: asyncio.Task[Any]) -> None:
        nonlocal left
        left -= 1
        if left == 0 and not fut.done():
            fut.set_result(Decision.REACHED)

    for t in tasks:
        t.add_done_callback(done)
    return fut
