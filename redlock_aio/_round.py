"""One round: the same request to every node at once, each under its own timeout.

The caller wakes as soon as the vote is decided (a quorum said yes, or a quorum
is out of reach), not when the slowest node answers. Requests still in flight
go on, each cancelled at its deadline, so a hung node costs at most the
per-node timeout and none of it once a majority has answered.

A node that can post (:class:`~redlock_aio._node.Poster`, the default
transport) gets the request written at once and answers through a bare future:
no task, and one timer for the whole round. Any other node runs the request as
a task.

Each request on a node can be ordered after the previous request of the same
lock on that node (``after``): a release then never overtakes a late ``SET`` or
``PEXPIRE``, so a key that lands late is still deleted. On one connection the
order is the node's own; elsewhere the request's task waits for the previous
one.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from functools import partial
from typing import Any, NoReturn, TypeAlias

import anyio

from ._acl import describe
from ._errors import NodeError
from ._node import Node, Poster
from ._quorum import Decision, NodeOutcome, Vote, decide, quorum
from ._turn import TurnEnd, turn_end

Call: TypeAlias = Callable[[Node], Awaitable[object]]
#: Turns a reply into a vote: True (yes), False (no), or a
#: :class:`Quarantined` yes that does not count.
Decode: TypeAlias = Callable[[object], "bool | Quarantined"]
Spawn: TypeAlias = Callable[[Coroutine[Any, Any, object]], "asyncio.Task[object]"]
Hook: TypeAlias = Callable[["asyncio.Future[Any]"], None]
Post: TypeAlias = Callable[
    [bytes, "asyncio.Future[Any] | None", "str | None", Hook],
    "asyncio.Future[Any] | None",
]


logger = logging.getLogger("redlock_aio")

_RESOLUTION = time.get_clock_info("monotonic").resolution

#: More timeouts a request gets while its node is still answering others.
BACKLOG_GRACE = 4

# Enum members as module constants: on Python 3.11 ``Vote.YES`` is an
# attribute lookup that costs about 150 ns, and the hot path makes dozens.
_YES = Vote.YES
_PENDING = Vote.PENDING
_UNDECIDED = Decision.PENDING
_REACHED = Decision.REACHED
_FAILED = Decision.FAILED
#: Votes that are answers from the node (not errors, timeouts or pending).
_ANSWERS = frozenset((Vote.YES, Vote.NO, Vote.QUARANTINED))


class Quarantined:
    """A yes from a node in its restart quarantine: the key was set, but the
    node may have lost a lock that is still held, so the yes does not count.

    :ivar wait: seconds of quarantine left, on the node's clock.
    :ivar fresh: the node's marker was missing until this request: it has
        just been found to have lost its data (or to be new).
    """

    __slots__ = ("fresh", "wait")

    def __init__(self, wait: float, fresh: bool) -> None:
        self.wait = wait
        self.fresh = fresh

    def reason(self) -> str:
        return (
            "it lost its data or is new (no marker key), so it may have "
            "forgotten a lock that is still held: its yes counts in "
            f"{self.wait:.1f} s (restart_quarantine)"
        )


class Ask:
    """One request, in both forms: ``payload``, the encoded command a posting
    node writes as it is (the same bytes for every node), whose reply means yes
    if it equals ``want``; and ``call``, the coroutine any other node runs.
    ``script`` is the Lua source behind an ``EVALSHA`` payload. ``decode``, if
    set, turns either form's reply into the vote instead of ``want``."""

    __slots__ = ("call", "decode", "payload", "script", "want")

    def __init__(
        self,
        call: Call,
        payload: bytes,
        want: object,
        script: str | None = None,
        decode: Decode | None = None,
    ) -> None:
        self.call = call
        self.payload = payload
        self.want = want
        self.script = script
        self.decode = decode


class Fleet:
    """An AsyncRedlock's nodes, and what every round on them shares: each
    node's post method (or None), its constant outcomes, the task spawner, the
    rounds still in flight (so that closing can wait for them), and one timer
    for all their deadlines.

    The deadlines are kept in a heap and the timer is armed for the earliest;
    a round that settles early is left in the heap and skipped when its time
    comes. That is cheaper than a timer per round, which would nearly always be
    cancelled.
    """

    __slots__ = (
        "_deadlines",
        "_needed",
        "_seq",
        "_starting",
        "_timer",
        "_timer_at",
        "_turn",
        "failing",
        "no",
        "nodes",
        "pending",
        "posts",
        "rounds",
        "spawn",
        "yes",
    )

    def __init__(self, nodes: Sequence[Node], spawn: Spawn) -> None:
        self.nodes = tuple(nodes)
        self.spawn = spawn
        self.posts: tuple[Post | None, ...] = tuple(
            node.post if isinstance(node, Poster) else None for node in nodes
        )
        self.pending = tuple(NodeOutcome(n.name, Vote.PENDING) for n in nodes)
        self.yes = tuple(NodeOutcome(n.name, Vote.YES) for n in nodes)
        self.no = tuple(NodeOutcome(n.name, Vote.NO) for n in nodes)
        self.rounds: set[Round] = set()
        #: Per node: failing (its latest request failed or timed out), until
        #: it answers again. Logged once per change.
        self.failing = [False] * len(nodes)
        self._needed = quorum(len(nodes))
        self._deadlines: list[tuple[float, int, Round]] = []
        # Rounds started in this turn of the loop, timed from its end.
        self._starting: list[tuple[float, Round]] = []
        self._turn: TurnEnd | None = None
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def failed(self, i: int, outcome: NodeOutcome) -> None:
        """Node ``i`` failed or timed out: a WARNING if it was answering, and
        one more if that leaves no quorum within reach."""
        if self.failing[i]:
            return
        self.failing[i] = True
        logger.warning("node %s is failing: %s", self.nodes[i].name, outcome)
        down = sum(self.failing)
        n = len(self.nodes)
        if down == n - self._needed + 1:
            logger.warning(
                "no quorum within reach: %d of %d nodes failing (%d needed); no "
                "lock can be acquired or extended until enough answer again",
                down,
                n,
                self._needed,
            )

    def recovered(self, i: int) -> None:
        """Node ``i`` answers again after failing: INFO, once."""
        self.failing[i] = False
        down = sum(self.failing)
        logger.info("node %s answers again", self.nodes[i].name)
        if down == len(self.nodes) - self._needed:
            logger.info("a quorum of nodes is within reach again")

    def in_flight(self) -> list[asyncio.Future[Any]]:
        """Every request of every round not yet answered or timed out."""
        return [f for r in self.rounds for f in r.replies if not f.done()]

    def expire_after(
        self, loop: asyncio.AbstractEventLoop, timeout: float, rnd: Round
    ) -> None:
        """Have ``rnd`` expire ``timeout`` seconds after its requests went out,
        unless it has settled by then. Mostly that is now; in a burst, whose
        writes wait for the end of this turn of the loop, it is the end of the
        turn, so that a long turn of the client's own (ten thousand releases at
        once) is not charged to the nodes."""
        turn = self._turn
        if turn is None or turn.loop is not loop:
            turn = self._turn = turn_end(loop)
        if turn.pending:  # the end of the turn has work anyway: ride along
            starting = self._starting
            if not starting:
                turn.add(partial(self._stamp, loop))
            starting.append((timeout, rnd))
        else:
            heapq.heappush(
                self._deadlines, (loop.time() + timeout, next(self._seq), rnd)
            )
            self._arm(loop)

    def _stamp(self, loop: asyncio.AbstractEventLoop) -> None:
        starting, self._starting = self._starting, []
        now = loop.time()
        deadlines = self._deadlines
        seq = self._seq
        for timeout, rnd in starting:
            if rnd._left:
                heapq.heappush(deadlines, (now + timeout, next(seq), rnd))
        self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Set the timer for the earliest deadline, if it is not set for it."""
        deadlines = self._deadlines
        if deadlines and deadlines[0][0] < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            when = self._timer_at = deadlines[0][0]
            self._timer = loop.call_at(when, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._timer_at = math.inf
        deadlines = self._deadlines
        now = loop.time() + _RESOLUTION  # as the loop judges a timer due
        # Drop the settled rounds at the head, and expire the due ones; stop at
        # the earliest round still in flight and not yet due.
        while deadlines:
            when, _, rnd = deadlines[0]
            if rnd._left and when > now:
                break
            heapq.heappop(deadlines)
            if rnd._left:
                # One more turn of the loop: after a stall, the reply may
                # already have been read, its callback scheduled behind this.
                loop.call_soon(rnd._expire)
        if deadlines:
            when = deadlines[0][0]
            self._timer_at = when
            self._timer = loop.call_at(when, self._fire, loop)

    def close(self) -> None:
        """Stop the timer (every round has settled)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = math.inf
        self._deadlines.clear()
        self._starting.clear()


class Round:
    """Send a request to every node now; :attr:`decided` resolves once the
    outcome is known.

    :param fleet: the nodes.
    :param ask: what to ask each node.
    :param timeout: seconds each node gets, counted from now (including the
        wait for the request it is ordered after).
    :param needed: yes votes that make the outcome a success.
    :param only: the indices of the nodes to ask (default: all), in order;
        ``after``, ``before`` and :attr:`outcomes` follow this order.
    :param wait_all: resolve once every node has answered or timed out, and
        not at quorum; with ``before``, as soon as ``needed`` nodes answered
        (yes or no) and every node that answered the previous request has.
    :param before: with ``wait_all``, the outcomes of the previous request on
        the same nodes (live, as they come). A node that failed or timed out on
        it, or has not answered it yet when the others are done, is not waited
        for: its request goes on in the background (a release need not wait for
        a node that was slow).
    :param after: per node, a request this one must be answered after.

    :ivar replies: per node, the future of its request (a task on nodes that
        do not post); done once the node answered, failed or timed out.
    :ivar outcomes: per node, its outcome so far (pending until it settles).
    :ivar decision: the outcome once decided (:attr:`decided` may have been
        cancelled by its waiter meanwhile).
    :ivar yes: the yes votes so far.
    :ivar answered: the answers so far (yes, no or quarantined; not errors or
        timeouts).
    """

    __slots__ = (
        "__weakref__",
        "_ask",
        "_before",
        "_expired",
        "_fleet",
        "_graces",
        "_left",
        "_needed",
        "_no",
        "_timeout",
        "_wait_all",
        "_watchers",
        "answered",
        "decided",
        "decision",
        "outcomes",
        "replies",
        "yes",
    )

    def __init__(
        self,
        fleet: Fleet,
        ask: Ask,
        *,
        timeout: float,
        needed: int,
        only: Sequence[int] | None = None,
        wait_all: bool = False,
        after: Sequence[asyncio.Future[Any] | None] | None = None,
        before: Sequence[NodeOutcome] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._fleet = fleet
        self._ask = ask
        self._wait_all = wait_all
        self._before = before
        self._needed = needed
        self.yes = self._no = self.answered = 0
        self._expired = False
        self._graces = 0
        timeout = max(timeout, 0.0)
        self._timeout = timeout
        self.decided: asyncio.Future[Decision] = loop.create_future()
        self.decision = _UNDECIDED
        self._watchers: list[asyncio.Future[Decision]] | None = None
        pending = fleet.pending
        if only is None:
            index: Sequence[int] = range(len(pending))
            self.outcomes: list[NodeOutcome] = list(pending)
        else:
            index = only
            self.outcomes = [pending[i] for i in index]
        self._left = len(index)
        replies: list[asyncio.Future[Any]] = []
        self.replies = replies
        posts = fleet.posts
        payload = ask.payload
        script = ask.script
        on_done = self._on_done
        for j, i in enumerate(index):
            prev = None if after is None else after[j]
            post = posts[i]
            fut = None
            if post is not None:
                fut = post(payload, prev, script, partial(on_done, j, i, True))
            if fut is None:
                fut = fleet.spawn(_ask(fleet.nodes[i], ask.call, prev))
                fut.add_done_callback(partial(on_done, j, i, False))
            replies.append(fut)
        if self._left:
            fleet.rounds.add(self)
            fleet.expire_after(loop, timeout, self)

    def _expire(self) -> None:
        """The deadline passed: cancel the requests of nodes that are silent.
        A node that is still answering, only behind a backlog (a burst of
        thousands of requests from this client), gets up to
        :data:`BACKLOG_GRACE` more timeouts instead, so that a client's own
        burst is not mistaken for a failing node."""
        self._expired = True
        loop = asyncio.get_running_loop()
        now = loop.time()
        timeout = self._timeout
        busy = False
        for fut in self.replies:
            if not fut.done():
                if self._graces < BACKLOG_GRACE and _answering(fut, now, timeout):
                    busy = True
                else:
                    fut.cancel()
        if busy:
            self._graces += 1
            self._fleet.expire_after(loop, timeout, self)

    def _on_done(self, j: int, i: int, raw: bool, fut: asyncio.Future[Any]) -> None:
        """Node ``i`` (``j``-th of this round) settled: count its vote."""
        fleet = self._fleet
        ours = False  # a cancellation of ours (closing) says nothing of the node
        try:
            result = fut.result()
        except asyncio.CancelledError:
            outcome = self._cancelled(i)
            ours = not self._expired
        except Exception as exc:  # noqa: BLE001 (any failure is a vote against)
            name = fleet.nodes[i].name
            err = NodeError(name, describe(exc, self._ask.script))
            err.__cause__ = exc
            outcome = NodeOutcome(name, Vote.ERROR, err)
        else:
            ask = self._ask
            decode = ask.decode
            if decode is not None:
                result = decode(result)
            elif raw:
                result = result == ask.want
            if result is True:
                outcome = fleet.yes[i]
            elif type(result) is Quarantined:
                outcome = _quarantined(fleet.nodes[i].name, result)
            elif result:
                outcome = fleet.yes[i]
            else:
                outcome = fleet.no[i]
        self.outcomes[j] = outcome
        self._left -= 1
        if not self._left:
            fleet.rounds.discard(self)
        vote = outcome.vote
        if vote is _YES:
            self.yes += 1
            self.answered += 1
            if fleet.failing[i]:
                fleet.recovered(i)
        else:
            self._no += 1
            if vote in _ANSWERS:
                self.answered += 1
                if fleet.failing[i]:
                    fleet.recovered(i)
            elif ours is False:
                fleet.failed(i, outcome)
        if self.decision is not _UNDECIDED:
            return
        needed = self._needed
        if self._wait_all:
            if not self._left or (self.answered >= needed and self._rest_excused()):
                self._decide(_REACHED if self.yes >= needed else _FAILED)
        else:
            decision = decide(len(self.replies), needed, self.yes, self._no)
            if decision is not _UNDECIDED:
                self._decide(decision)

    def _cancelled(self, i: int) -> NodeOutcome:
        name = self._fleet.nodes[i].name
        if self._expired:
            err = NodeError(name, f"no reply within {self._timeout * 1000:.0f} ms")
            err.__cause__ = TimeoutError()
            return NodeOutcome(name, Vote.TIMEOUT, err)
        err = NodeError(name, "request cancelled (client closing)")
        return NodeOutcome(name, Vote.ERROR, err)

    def _rest_excused(self) -> bool:
        """Every node still pending failed, timed out or has not answered the
        previous request (see ``before``)."""
        before = self._before
        if before is None:
            return False
        for now, then in zip(self.outcomes, before, strict=True):
            if now.vote is _PENDING and then.vote in _ANSWERS:
                return False
        return True

    def _decide(self, decision: Decision) -> None:
        self.decision = decision
        if not self.decided.done():
            self.decided.set_result(decision)
        watchers, self._watchers = self._watchers, None
        for fut in watchers or ():
            if not fut.done():
                fut.set_result(decision)

    def watch(self) -> asyncio.Future[Decision]:
        """A new future that resolves with the decision (for a waiter whose
        wait for :attr:`decided` was cancelled)."""
        fut: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        if self.decision is not _UNDECIDED:
            fut.set_result(self.decision)
        elif self._watchers is None:
            self._watchers = [fut]
        else:
            self._watchers.append(fut)
        return fut


def _quarantined(name: str, grant: Quarantined) -> NodeOutcome:
    """The outcome of a yes that must not count yet; a node just found to have
    lost its data is a warning (the first client that sees it logs it)."""
    if grant.fresh:
        logger.warning(
            "node %s has no marker key: it lost its data (a restart without "
            "persistence, FLUSHALL, a replaced server) or is new; its yes votes "
            "count again after a restart quarantine of %.1f s. On a new "
            "deployment, `redlock-aio init` (AsyncRedlock.init_nodes) spares it",
            name,
            grant.wait,
        )
    return NodeOutcome(name, Vote.QUARANTINED, NodeError(name, grant.reason()))


def _answering(fut: asyncio.Future[Any], now: float, window: float) -> bool:
    """Whether the node of a posted request has answered anything since the
    request was written, and within the last ``window`` seconds."""
    answering: Callable[[float, float], bool] | None = getattr(fut, "answering", None)
    return answering is not None and answering(now, window)


async def _ask(node: Node, call: Call, prev: asyncio.Future[Any] | None) -> object:
    if prev is not None and not prev.done():
        # asyncio.wait never cancels prev, even if this task is cancelled.
        await asyncio.wait((prev,))
    return await call(node)


async def wait_decided(rnd: Round) -> Decision:
    """Wait for the round's decision, which comes by itself within a bound (the
    per-node timeout), even if the caller is cancelled meanwhile; then re-raise
    that cancellation. This is how release and the cleanup of a failed or
    cancelled acquire finish their work before a cancellation propagates."""
    try:
        return await rnd.decided  # cancelling it does not stop the round
    except asyncio.CancelledError as first:
        await _outlast(lambda: rnd.decision is not _UNDECIDED, rnd.watch, first)


async def wait_tasks_shielded(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Wait, shielded as :func:`wait_decided`, until every task has ended."""
    pending = [t for t in tasks if not t.done()]
    if pending:
        fut = _all_done(pending)
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError as first:
            await _outlast(fut.done, lambda: asyncio.shield(fut), first)


async def _outlast(
    done: Callable[[], bool],
    watch: Callable[[], Awaitable[object]],
    cancelled: asyncio.CancelledError,
) -> NoReturn:
    """Wait, shielded, until ``done()``, awaiting ``watch()`` meanwhile; then
    raise the (latest) cancellation."""
    # A cancelled anyio scope re-delivers its cancellation at every await:
    # shield this task from it until done.
    with anyio.CancelScope(shield=True):
        while not done():
            try:
                await watch()
            except asyncio.CancelledError as exc:
                cancelled = exc
    raise cancelled


def _all_done(tasks: Sequence[asyncio.Future[Any]]) -> asyncio.Future[Decision]:
    """A future that resolves when every task has ended, whatever their result."""
    fut: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
    left = len(tasks)

    def done(_: asyncio.Future[Any]) -> None:
        nonlocal left
        left -= 1
        if left == 0 and not fut.done():
            fut.set_result(Decision.REACHED)

    for t in tasks:
        t.add_done_callback(done)
    return fut
