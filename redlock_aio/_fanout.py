"""One round: the same command to every node at once, decided at quorum.

The caller wakes as soon as the vote is decided (a quorum said yes, or a quorum
is out of reach), not when the slowest node answers. Requests still in flight
go on; each node times its own requests (see :meth:`~._node.Node.submit`), so a
hung node costs at most the per-node timeout, and none of it once a majority
has answered. A late answer still shows in :attr:`Round.outcomes`.

Each request on a node can be ordered after the previous request of the same
lock on that node (``after``): a release then never overtakes a late ``SET`` or
``PEXPIRE``, so a key that lands late is still deleted.

Nothing here keeps a round alive once its requests are done: a reply's hook is
dropped once it has been counted, so rounds are freed by reference counting.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn, overload

import anyio

from ._acl import describe
from ._errors import NodeError
from ._quorum import Decision, NodeOutcome, Quarantined, Vote, decide, quorum

if TYPE_CHECKING:
    from ._commands import Command
    from ._node import Node

logger = logging.getLogger("redlock_aio")

_get_running_loop = asyncio.get_running_loop
_Future = asyncio.Future
_INF = math.inf

# Enum members as module constants: on Python 3.11 ``Vote.YES`` is an
# attribute lookup that costs about 45 ns, and the hot path makes dozens.
_YES = Vote.YES
_PENDING = Vote.PENDING
_UNDECIDED = Decision.PENDING
_REACHED = Decision.REACHED
_FAILED = Decision.FAILED
#: Votes that are answers from the node (not errors, timeouts or pending). A
#: tuple, not a set: ``in`` a set hashes the vote, and ``Enum.__hash__`` is a
#: Python call; a tuple compares identities first.
_ANSWERS = (Vote.YES, Vote.NO, Vote.QUARANTINED)


class Nodes:
    """A client's nodes and what every round on them shares.

    :ivar nodes: the nodes, in the caller's order.
    :ivar pending: per node, its outcome before it answered (shared, immutable).
    :ivar yes: per node, its yes outcome; :ivar no: its no outcome.
    :ivar failing: per node, whether its latest request failed or timed out
        (until it answers again).
    :ivar rounds: the rounds not yet settled on every node (closing waits for them).
    """

    __slots__ = (
        "failing",
        "index",
        "needed",
        "no",
        "nodes",
        "pending",
        "rounds",
        "warned_hook",
        "yes",
    )

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = tuple(nodes)
        self.index = range(len(self.nodes))
        self.needed = quorum(len(self.nodes))
        self.pending = tuple(NodeOutcome(n.name, Vote.PENDING) for n in nodes)
        self.yes = tuple(NodeOutcome(n.name, Vote.YES) for n in nodes)
        self.no = tuple(NodeOutcome(n.name, Vote.NO) for n in nodes)
        self.failing = [False] * len(nodes)
        self.rounds: set[Round] = set()
        #: whether a node broke the on_done contract (warned once)
        self.warned_hook = False

    def __len__(self) -> int:
        return len(self.nodes)

    def failed(self, i: int, outcome: NodeOutcome) -> None:
        """Node ``i`` failed or timed out: a WARNING if it was answering, and
        one more if that leaves no quorum within reach."""
        if self.failing[i]:
            return
        self.failing[i] = True
        logger.warning("node %s is failing: %s", self.nodes[i].name, outcome)
        down = sum(self.failing)
        n = len(self.nodes)
        if down == n - self.needed + 1:
            logger.warning(
                "no quorum within reach: %d of %d nodes failing (%d needed); no "
                "lock can be acquired or extended until enough answer again",
                down,
                n,
                self.needed,
            )

    def recovered(self, i: int) -> None:
        """Node ``i`` answers again after failing: INFO, once."""
        self.failing[i] = False
        down = sum(self.failing)
        logger.info("node %s answers again", self.nodes[i].name)
        if down == len(self.nodes) - self.needed:
            logger.info("a quorum of nodes is within reach again")

    def in_flight(self) -> list[asyncio.Future[Any]]:
        """Every request of every round not yet answered or timed out."""
        return [f for r in self.rounds for f in r.replies if not f.done()]


def _failure(node: Node, fut: asyncio.Future[Any], script: str | None) -> NodeOutcome:
    """The outcome of a request that failed: a timeout, an error, or cancelled
    (the client is closing)."""
    name = node.name
    try:
        exc = fut.exception()
    except asyncio.CancelledError:
        return NodeOutcome(
            name, Vote.ERROR, NodeError(name, "request cancelled (client closing)")
        )
    assert exc is not None
    if isinstance(exc, TimeoutError):
        err = NodeError(name, str(exc) or "no reply in time")
        err.__cause__ = exc
        return NodeOutcome(name, Vote.TIMEOUT, err)
    err = NodeError(name, describe(exc, script))
    err.__cause__ = exc
    return NodeOutcome(name, Vote.ERROR, err)


class Round:
    """Send one command to every node now; :attr:`decided` resolves once the
    outcome is known.

    :param nodes: the nodes.
    :param command: what to send.
    :param timeout: seconds each node gets (see :meth:`~._node.Node.submit`).
    :param needed: yes votes that make the outcome a success.
    :param only: the indices of the nodes to ask (default: all), in order;
        ``after`` and :attr:`outcomes` follow this order.
    :param wait_all: resolve once every node has answered or failed, not at
        quorum; with ``answered_before``, as soon as ``needed`` nodes answered
        (yes or no) and every node that answered the previous request has.
    :param answered_before: with ``wait_all``, the outcomes of the previous
        request on the same nodes (live, as they come). A node that failed or
        timed out on it, or has not answered it yet when the others are done,
        is not waited for: its request goes on in the background (a release
        need not wait for a node that was slow).
    :param after: per node, a request this one must be answered after.
    :param not_after: an event-loop time after which no answer can count.
    :param loop: the running loop, if the caller has it (a system call less).

    :ivar replies: per node, the future of its request.
    :ivar outcomes: per node, its outcome so far (pending until it settles).
    :ivar decision: the outcome once decided (:attr:`decided` may have been
        cancelled by its waiter meanwhile).
    :ivar yes: the yes votes so far.
    :ivar failures: the requests that failed, timed out or were cancelled so far.
    :ivar unsettled: the requests not settled yet (neither answered nor failed).
    """

    __slots__ = (
        "_answered_before",
        "_asked",
        "_begun",
        "_command",
        "_decode",
        "_index",
        "_needed",
        "_nodes",
        "_refused",
        "_wait_all",
        "_watchers",
        "_yes_reply",
        "decided",
        "decision",
        "failures",
        "outcomes",
        "replies",
        "unsettled",
        "yes",
    )

    def __init__(
        self,
        nodes: Nodes,
        command: Command,
        *,
        timeout: float,
        needed: int,
        only: Sequence[int] | None = None,
        wait_all: bool = False,
        answered_before: Sequence[NodeOutcome] | None = None,
        after: Sequence[asyncio.Future[Any] | None] | None = None,
        not_after: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if loop is None:
            loop = _get_running_loop()
        self._begun = loop.time()
        self._nodes = nodes
        self._command = command
        self._decode = command.decode
        self._yes_reply = command.yes
        self._wait_all = wait_all
        self._answered_before = answered_before
        self._needed = needed
        self.yes = self._refused = self.failures = 0
        # asyncio.Future itself, not loop.create_future(): a frame fewer
        # (uvloop's create_future() makes the same asyncio.Future).
        self.decided: asyncio.Future[Decision] = _Future(loop=loop)
        self.decision = _UNDECIDED
        self._watchers: list[asyncio.Future[Decision]] | None = None
        if only is None:
            self.outcomes: list[NodeOutcome] = list(nodes.pending)
            ask: Sequence[Node] = nodes.nodes
            self._index: Sequence[int] = nodes.index
        else:
            pending = nodes.pending
            node_list = nodes.nodes
            self.outcomes = [pending[i] for i in only]
            ask = [node_list[i] for i in only]
            self._index = only
        self.unsettled = self._asked = len(ask)
        replies: list[asyncio.Future[Any]] = []
        self.replies = replies
        if not ask:
            return
        nodes.rounds.add(self)
        # One bound method for every request (not a partial per request): the
        # node calls it from Python, and a partial would be a C call between.
        on_reply = self._on_reply
        if timeout < 0.0:  # noqa: PLR1730 - max() is a call more
            timeout = 0.0
        # Appended one by one (not a comprehension): a request that settles
        # within its own submit() finds the ones before it listed.
        for j, node in enumerate(ask):
            replies.append(
                node.submit(
                    command,
                    timeout=timeout,
                    after=None if after is None else after[j],
                    on_done=on_reply,
                    not_after=not_after,
                    loop=loop,
                )
            )

    def _on_reply(self, fut: asyncio.Future[Any]) -> None:
        """A request settled: count its node's vote."""
        replies = self.replies
        try:
            j = replies.index(fut)  # this round's j-th request
        except ValueError:
            j = len(replies)
            if j == self._asked:
                self._count_by_futures()
                return
            # Settled within its own submit(), before it was listed: the last.
        i = self._index[j]  # node i of the client's
        try:
            reply = fut.result()
        except BaseException:  # noqa: BLE001 - failed, timed out or cancelled: not a vote
            self._count_failure(j, i, fut)
            return
        nodes = self._nodes
        # The usual yes (``+OK``, ``1``) without calling the decoder.
        if reply == self._yes_reply or (vote := self._decode(reply)) is True:
            self.outcomes[j] = nodes.yes[i]
            self.yes += 1
        elif vote is False:
            self.outcomes[j] = nodes.no[i]
            self._refused += 1
        elif type(vote) is Quarantined:
            self.outcomes[j] = _quarantined(nodes.nodes[i].name, vote)
            self._refused += 1
        else:
            name = nodes.nodes[i].name
            err = NodeError(name, f"unexpected reply {vote!r:.80}")
            self._count(j, i, NodeOutcome(name, Vote.ERROR, err), ours=False)
            return
        if nodes.failing[i]:
            nodes.recovered(i)
        left = self.unsettled = self.unsettled - 1
        if not left:
            nodes.rounds.discard(self)
        if self.decision is _UNDECIDED:
            self._maybe_decide()

    def _count_by_futures(self) -> None:
        """A node called ``on_done`` with a future its ``submit()`` did not
        return (a wrapper that hands the hook on to an inner node breaks the
        :class:`~._node.Node` contract so): count the requests still pending
        by their own futures instead, as each settles, so that the round
        still decides."""
        if not self._nodes.warned_hook:
            self._nodes.warned_hook = True
            logger.warning(
                "a node called on_done with a future other than the one its "
                "submit() returned (see Node.submit); its votes are counted "
                "from its own futures, a turn of the loop later"
            )
        for j, reply in enumerate(self.replies):
            if self.outcomes[j].vote is _PENDING:
                reply.add_done_callback(self._on_own_future)

    def _on_own_future(self, fut: asyncio.Future[Any]) -> None:
        j = self.replies.index(fut)
        if self.outcomes[j].vote is _PENDING:  # not counted yet
            self._on_reply(fut)

    def _count_failure(self, j: int, i: int, fut: asyncio.Future[Any]) -> None:
        outcome = _failure(self._nodes.nodes[i], fut, self._command.script)
        # A cancellation of ours (closing) says nothing of the node.
        self._count(j, i, outcome, ours=fut.cancelled())

    def _count(self, j: int, i: int, outcome: NodeOutcome, *, ours: bool) -> None:
        """Count a reply that is not an answer (an error, a timeout)."""
        nodes = self._nodes
        self.outcomes[j] = outcome
        self.failures += 1
        if not ours:
            nodes.failed(i, outcome)
        self.unsettled -= 1
        if not self.unsettled:
            nodes.rounds.discard(self)
        if self.decision is _UNDECIDED:
            self._maybe_decide()

    def _maybe_decide(self) -> None:
        """Decide if the votes so far do: at quorum (see :func:`decide`), or
        with ``wait_all`` once every node is done, or once enough answered and
        the rest are excused."""
        needed = self._needed
        if not self._wait_all:
            decision = decide(
                self._asked, needed, self.yes, self._refused + self.failures
            )
            if decision is not _UNDECIDED:
                self._decide(decision)
        elif not self.unsettled or (
            self.yes + self._refused >= needed  # self.answered, a call sooner
            and self._rest_excused()
        ):
            self._decide(_REACHED if self.yes >= needed else _FAILED)

    @property
    def answered(self) -> int:
        """The answers so far (yes, no or quarantined; not errors or timeouts)."""
        return self.yes + self._refused

    def write_delay(self) -> float:
        """Seconds from the start of this round to the earliest write of a
        request that was answered yes, as its transport stamped it
        (``sent_at``, event-loop time, read before the write): no yes node
        can have run its request earlier. 0 if a transport does not say
        (redis-py's pool), or if no node said yes."""
        begun = self._begun
        earliest = _INF
        # zip() without strict=True, which costs twice as much here: one
        # outcome per request, by construction.
        for fut, outcome in zip(self.replies, self.outcomes):  # noqa: B905
            if outcome.vote is _YES:
                try:  # getattr(fut, "sent_at", begun), a call fewer
                    sent_at = fut.sent_at  # type: ignore[attr-defined]
                except AttributeError:
                    sent_at = begun
                if sent_at < earliest:  # noqa: PLR1730 - min() is a call more
                    earliest = sent_at
        if earliest <= begun or earliest == _INF:
            return 0.0
        return earliest - begun

    def _rest_excused(self) -> bool:
        """Every node still pending failed, timed out or has not answered the
        previous request (see ``answered_before``)."""
        before = self._answered_before
        if before is None:
            return False
        for j, now in enumerate(self.outcomes):
            if now.vote is _PENDING and before[j].vote in _ANSWERS:
                return False
        return True

    def _decide(self, decision: Decision) -> None:
        self.decision = decision
        decided = self.decided
        if not decided.done():
            decided.set_result(decision)
        watchers = self._watchers
        if watchers is not None:
            self._watchers = None
            for fut in watchers:
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


#: Called when one lock of a batch is decided: its index in the batch, the
#: decision, and its yes and no votes so far (no: the node does not hold the
#: key; errors and timeouts are neither).
OnDecided = Callable[[int, Decision, int, int], None]


class BatchRound:
    """One command over several locks (``extend_many``) to every node at once;
    each lock is decided on its own, at quorum, as in :class:`Round`.

    Each lock's outcomes are read through :meth:`row`: the round keeps one
    code per lock and node, not a list per lock, so that keeping many locks
    allocates nothing per lock that outlives the round's requests (a held
    lock refers to its latest batch until the next one: a list per lock and
    batch would be promoted to the oldest generation, and its growth there
    triggers full collections).

    :param locks: how many locks the command covers (its reply has one vote
        per lock).
    :param after: per node, a request this one must be answered after.
    :param on_decided: see :data:`OnDecided`.

    :ivar replies: per node, the future of its request.
    """

    __slots__ = (
        "_against",
        "_codes",
        "_command",
        "_decided",
        "_failures",
        "_left",
        "_needed",
        "_no",
        "_nodes",
        "_on_decided",
        "_yes",
        "replies",
    )

    def __init__(
        self,
        nodes: Nodes,
        command: Command,
        *,
        locks: int,
        timeout: float,
        needed: int,
        on_decided: OnDecided,
        after: Sequence[asyncio.Future[Any] | None] | None = None,
        not_after: float | None = None,
    ) -> None:
        self._nodes = nodes
        self._command: Command | None = command
        self._needed = needed
        self._on_decided: OnDecided | None = on_decided
        n = len(nodes.nodes)
        # Per lock k and node i, at k * n + i: what the node answered so far.
        self._codes = bytearray(locks * n)
        #: per node, its failure, if its request failed (for every lock)
        self._failures: list[NodeOutcome | None] = [None] * n
        self._left = n
        self._yes = [0] * locks
        self._no = [0] * locks
        self._against = [0] * locks
        self._decided = [False] * locks
        on_reply = self._on_reply
        timeout = max(timeout, 0.0)
        self.replies: list[asyncio.Future[Any]] = [
            node.submit(
                command,
                timeout=timeout,
                after=None if after is None else after[i],
                on_done=partial(on_reply, i),
                not_after=not_after,
            )
            for i, node in enumerate(nodes.nodes)
        ]

    def row(self, k: int) -> Sequence[NodeOutcome]:
        """Per node, lock ``k``'s outcome so far (a live view)."""
        return _BatchRow(self, k)

    def outcome(self, k: int, i: int) -> NodeOutcome:
        """Node ``i``'s outcome for lock ``k`` so far."""
        code = self._codes[k * len(self._failures) + i]
        nodes = self._nodes
        if code == _CODE_YES:
            return nodes.yes[i]
        if code == _CODE_NO:
            return nodes.no[i]
        if code == _CODE_FAILED:
            failure = self._failures[i]
            assert failure is not None
            return failure
        return nodes.pending[i]

    def _on_reply(self, i: int, fut: asyncio.Future[Any]) -> None:
        nodes = self._nodes
        node = nodes.nodes[i]
        command = self._command
        on_decided = self._on_decided
        assert command is not None  # each node answers once
        assert on_decided is not None
        self._left -= 1
        if not self._left:
            # Every node is done: drop what only counting needed (the command
            # of every lock's key and token, the caller's callback), as the
            # locks keep this round until their next request.
            self._command = self._on_decided = None
        m = len(self._yes)
        votes: list[bool] | None = None
        failed: NodeOutcome | None = None
        if fut.cancelled() or fut.exception() is not None:
            failed = _failure(node, fut, command.script)
        else:
            decoded = command.decode(fut.result())
            if isinstance(decoded, list) and len(decoded) == m:
                votes = decoded
            else:
                got = len(decoded) if isinstance(decoded, list) else "no"
                err = NodeError(
                    node.name, f"extend_many gave {got} answers for {m} keys"
                )
                failed = NodeOutcome(node.name, Vote.ERROR, err)
        if votes is not None:
            if nodes.failing[i]:
                nodes.recovered(i)
        elif not fut.cancelled():  # a cancellation of ours (closing) is not news
            assert failed is not None
            nodes.failed(i, failed)
        if failed is not None:
            self._failures[i] = failed
        n = len(nodes.nodes)
        needed = self._needed
        yes_count, no_count, against = self._yes, self._no, self._against
        decided = self._decided
        codes = self._codes
        for k in range(m):
            at = k * n + i
            if votes is None:
                against[k] += 1
                codes[at] = _CODE_FAILED
            elif votes[k]:
                yes_count[k] += 1
                codes[at] = _CODE_YES
            else:
                no_count[k] += 1
                against[k] += 1
                codes[at] = _CODE_NO
            if not decided[k]:
                decision = decide(n, needed, yes_count[k], against[k])
                if decision is not _UNDECIDED:
                    decided[k] = True
                    try:
                        on_decided(k, decision, yes_count[k], no_count[k])
                    except Exception:  # a bug: the other locks must still be decided
                        logger.exception("deciding an extension")


#: A node's answer for one lock of a :class:`BatchRound`, as one byte.
_CODE_PENDING, _CODE_YES, _CODE_NO, _CODE_FAILED = range(4)


class _BatchRow(Sequence[NodeOutcome]):
    """Lock ``k``'s outcomes in a :class:`BatchRound`, per node, as they come
    (made when asked for: nothing per lock is kept)."""

    __slots__ = ("_batch", "_k")

    def __init__(self, batch: BatchRound, k: int) -> None:
        self._batch = batch
        self._k = k

    def __len__(self) -> int:
        return len(self._batch._failures)

    @overload
    def __getitem__(self, i: int) -> NodeOutcome: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[NodeOutcome]: ...

    def __getitem__(self, i: int | slice) -> NodeOutcome | Sequence[NodeOutcome]:
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        return self._batch.outcome(self._k, i % n)


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


async def wait_decided(rnd: Round) -> Decision:
    """Wait for the round's decision, which comes by itself within a bound (the
    per-node timeout), even if the caller is cancelled meanwhile; then re-raise
    that cancellation. This is how release and the cleanup of a failed or
    cancelled acquire finish their work before a cancellation propagates."""
    try:
        return await rnd.decided  # cancelling it does not stop the round
    except asyncio.CancelledError as first:
        await finish_then_reraise(rnd, first)


async def finish_then_reraise(
    rnd: Round, cancelled: asyncio.CancelledError
) -> NoReturn:
    """What :func:`wait_decided` does once its wait was cancelled (for a
    caller that awaits ``rnd.decided`` itself, a coroutine fewer): wait,
    shielded, for the decision, then raise the cancellation."""
    await _finish_then_reraise(
        lambda: rnd.decision is not _UNDECIDED, rnd.watch, cancelled
    )


async def wait_tasks_shielded(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Wait, shielded as :func:`wait_decided`, until every task has ended."""
    pending = [t for t in tasks if not t.done()]
    if pending:
        fut = all_done(pending)
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError as first:
            await _finish_then_reraise(fut.done, lambda: asyncio.shield(fut), first)


async def _finish_then_reraise(
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


def all_done(tasks: Sequence[asyncio.Future[Any]]) -> asyncio.Future[Decision]:
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
