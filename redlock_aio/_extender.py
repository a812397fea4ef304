"""Auto-extension of every lock an :class:`AsyncRedlock` holds in ``async with``
blocks, in batches: a few requests per tick, not a task and a round trip per lock.

One :class:`Extender` per AsyncRedlock, created on the first auto-extended block,
runs one loop task. A lock is due when a third of its TTL has passed since its
validity was last set; locks wait in 10 ms time slots (no allocation per lock).
The loop sleeps until the earliest slot, takes every lock due within a short
window, and extends them together: per node one ``extend_many`` request per
chunk of at most :data:`CHUNK` keys, all nodes at once, one chunk per turn of
the event loop, each request under the per-node timeout (and never past the
earliest current deadline in its chunk). Each lock is then decided on its own,
by the rules of :meth:`Lock.extend`:

- validity is counted from ``start``, taken before the batch is sent;
- a quorum of yes before the lock's current deadline sets the new validity;
- the deadline passing first, or a quorum saying no (the key is gone or someone
  else's), marks the lock lost, which cancels its block;
- anything else (errors, timeouts) is retried shortly while an attempt can still
  finish in time, and marks the lock lost when it no longer can.

A node's batch request is chained after every earlier request of its locks on
that node still in flight, and becomes their tail, so a release never overtakes
an extension of the same lock on the same node.

Due times live on the event loop's clock (what sleeping uses); validity lives on
the AsyncRedlock's clock. Delays are differences on the latter, so an injected
clock still drives when locks fall due.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from functools import partial
from typing import TYPE_CHECKING, Any, final

from ._acl import describe
from ._config import ttl_ms
from ._errors import NodeError
from ._quorum import Decision, NodeOutcome, Vote, clock_drift, decide
from ._round import wait_tasks_shielded
from ._scripts import EXTEND_MANY
from ._wire import extend_many_payload

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from ._node import Node
    from ._redlock import AsyncRedlock, Lock

logger = logging.getLogger("redlock_aio")

#: Extend when this share of the TTL has passed since the last extension.
EXTEND_EVERY = 1 / 3
#: Most keys in one ``extend_many`` request: bounds the time a node spends in
#: one script call and the size of one request and reply.
CHUNK = 1000
#: A tick also takes the locks due within this many seconds (at most a 30th of
#: the TTL), so that locks acquired a little apart share a batch.
WINDOW = 0.05
#: Width of the time slots locks are scheduled in, seconds: a lock falls due at
#: most this much before its time.
SLOT = 0.01
#: After an extension without quorum, retry after this share of the TTL, at most
#: RETRY_MAX seconds.
RETRY_SHARE = 0.05
RETRY_MAX = 0.25

_LOST_CLOSED = "the AsyncRedlock was closed"


@final
class Entry:
    """One lock registered for auto-extension, and the tally of its latest batch."""

    __slots__ = (
        "active",
        "bad",
        "chunk",
        "deadline",
        "decided",
        "lock",
        "no",
        "outcomes",
        "slot",
        "start",
        "terms",
        "yes",
    )

    def __init__(self, lock: Lock, terms: _Terms) -> None:
        self.lock = lock
        self.terms = terms
        self.active = True
        #: the time slot it is scheduled in; -1: not scheduled (new or in flight)
        self.slot = -1
        self.chunk: _Chunk | None = None
        self.start = 0.0
        self.deadline = 0.0
        self.yes = self.no = self.bad = 0
        self.decided = True
        self.outcomes: list[NodeOutcome] = []


@final
class _Terms:
    """What one TTL implies for its locks, worked out once per distinct TTL."""

    __slots__ = ("due", "gap", "node_timeout", "px", "ttl", "validity")

    def __init__(self, redlock: AsyncRedlock, ttl: float) -> None:
        self.ttl = ttl
        self.px = ttl_ms(ttl)
        #: validity of an extension, counted from its start
        self.validity = ttl - clock_drift(ttl, redlock.settings.drift_factor)
        #: seconds from an extension's start to the next
        self.due = ttl * EXTEND_EVERY
        #: seconds before retrying an extension that missed its quorum
        self.gap = min(ttl * RETRY_SHARE, RETRY_MAX)
        self.node_timeout = redlock.settings.node_timeout_for(ttl)


@final
class _Chunk:
    """Up to :data:`CHUNK` locks of one batch, sent to every node in one request."""

    __slots__ = (
        "answers",
        "entries",
        "expired",
        "loop",
        "start",
        "tasks",
        "timeout",
        "timers",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        entries: list[Entry],
        n: int,
        start: float,
        timeout: float,
    ) -> None:
        self.loop = loop
        self.entries = entries
        self.start = start
        self.timeout = timeout
        self.answers: list[list[bool] | None] = [None] * n
        self.expired = [False] * n
        self.tasks: list[asyncio.Future[Any]] = []
        self.timers: list[asyncio.Handle] = []

    def expire(self, i: int) -> None:
        # One more turn of the loop first: a reply that has arrived while the
        # loop was busy, but whose task has not resumed yet, still counts.
        self.timers[i] = self.loop.call_soon(self._cancel, i)

    def _cancel(self, i: int) -> None:
        task = self.tasks[i]
        if not task.done():
            self.expired[i] = True
            task.cancel()


async def _ask(
    node: Node,
    items: Sequence[tuple[bytes, bytes, int]],
    prev: Collection[asyncio.Future[Any]],
    answers: list[list[bool] | None],
    i: int,
) -> bool:
    if prev:
        # asyncio.wait never cancels them, even if this task is cancelled.
        await asyncio.wait(prev)
    answers[i] = await node.extend_many(items)
    return True


@final
class Extender:
    """Keeps the registered locks of one :class:`AsyncRedlock` alive, in batches.

    Get it with :meth:`of`; :meth:`add` a lock when its block starts,
    :meth:`remove` it when the block ends (before releasing it). A lock that
    cannot be kept is marked lost (``Lock._mark_lost``), which tells its holder.
    """

    def __init__(self, redlock: AsyncRedlock) -> None:
        self._redlock = redlock
        nodes = redlock.nodes
        self._n = len(nodes)
        # Locks by the time slot they fall due in, and the slots in a heap.
        self._slots: dict[int, list[Entry]] = {}
        self._slot_heap: list[int] = []
        self._entries: set[Entry] = set()
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None
        self._closed = False
        self._terms: dict[float, _Terms] = {}
        # Outcomes shared by every lock of a batch (they are immutable).
        self._pending = [NodeOutcome(n.name, Vote.PENDING) for n in nodes]
        self._yes = [NodeOutcome(n.name, Vote.YES) for n in nodes]
        self._no = [NodeOutcome(n.name, Vote.NO) for n in nodes]
        #: requests sent so far (one per node per chunk), and lock extensions
        #: asked for (one per lock per batch): for tests and monitoring
        self.requests = 0
        self.extensions = 0

    @classmethod
    def of(cls, redlock: AsyncRedlock) -> Extender:
        """The extender of ``redlock``, created on first use."""
        extender = redlock._extender
        if extender is None:
            extender = redlock._extender = cls(redlock)
        return extender

    @property
    def registered(self) -> int:
        """How many locks are registered."""
        return len(self._entries)

    # -- registration ------------------------------------------------------------

    def add(self, lock: Lock) -> Entry:
        """Keep ``lock`` alive from now until :meth:`remove` (or until it is lost)."""
        terms = self._terms_for(lock.ttl)
        entry = Entry(lock, terms)
        rl = self._redlock
        # Closing (maybe an acquire that was in flight): no new loop task, which
        # aclose() would wait for.
        if self._closed or rl._closed:
            entry.active = False
            lock._mark_lost(_LOST_CLOSED, warn=False)
            return entry
        loop = asyncio.get_running_loop()
        # Due a third of the TTL after the start its validity was counted from.
        started = lock.valid_until - terms.validity
        due_in = started + terms.due - rl.clock()
        self._entries.add(entry)
        self._schedule(entry, loop.time() + due_in)
        task = self._task
        if task is None or task.done():
            self._task = rl._spawn(self._run())
        return entry

    def remove(self, entry: Entry) -> None:
        """Stop extending this lock. A batch in flight still ends (and a release
        chains after it), but its answer no longer touches the lock."""
        if entry.active:
            entry.active = False
            self._entries.discard(entry)
            # Left in its slot, if any, until that slot falls due: skipped then.

    async def aclose(self) -> None:
        """End the loop task and mark every registered lock lost (nothing will
        extend it any more). Requests in flight end by their own timeout."""
        self._closed = True
        task = self._task
        if task is not None:
            task.cancel()
            await wait_tasks_shielded([task])
        self._abandon_all(_LOST_CLOSED)

    def _abandon_all(self, reason: str) -> None:
        """Stop extending every registered lock, and mark each lost."""
        self._slots.clear()
        self._slot_heap.clear()
        entries = list(self._entries)
        self._entries.clear()
        closing = reason is _LOST_CLOSED  # not news: aclose() says so once
        for entry in entries:
            entry.active = False
            entry.lock._mark_lost(reason, warn=not closing)

    def _schedule(self, entry: Entry, due: float) -> None:
        """Make ``entry`` fall due at loop time ``due`` (or up to one
        :data:`SLOT` earlier): no allocation per lock, O(1) but for a new slot."""
        if self._closed:
            return
        slot = int(due / SLOT)
        entry.slot = slot
        bucket = self._slots.get(slot)
        if bucket is not None:
            bucket.append(entry)
            return
        self._slots[slot] = [entry]
        slots = self._slot_heap
        earliest = not slots or slot < slots[0]
        heapq.heappush(slots, slot)
        if earliest:
            wake = self._wake
            if wake is not None and not wake.done():
                wake.set_result(None)

    def _terms_for(self, ttl: float) -> _Terms:
        terms = self._terms.get(ttl)
        if terms is None:
            terms = self._terms[ttl] = _Terms(self._redlock, ttl)
        return terms

    def _drop(self, entry: Entry) -> None:
        entry.active = False
        self._entries.discard(entry)

    # -- the loop ------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        slots = self._slot_heap
        try:
            while True:
                delay = slots[0] * SLOT - loop.time() if slots else None
                if delay is None or delay > 0:
                    await self._sleep(loop, delay)
                    continue
                for chunk in self._take(loop):
                    self._send(loop, chunk)
                    # One chunk per turn of the loop: a large batch does not
                    # hold the loop (and everyone's timers) for long.
                    await asyncio.sleep(0)
        except Exception as exc:  # a bug, not a node failure: do not hold silently
            logger.exception("auto-extension failed")
            self._abandon_all(f"auto-extension failed: {exc!r}")

    async def _sleep(
        self, loop: asyncio.AbstractEventLoop, delay: float | None
    ) -> None:
        """Until ``delay`` has passed (for ever if None) or a lock due earlier
        than all others is scheduled."""
        wake: asyncio.Future[None] = loop.create_future()
        self._wake = wake
        timer = None if delay is None else loop.call_later(delay, _set, wake)
        try:
            await wake
        finally:
            self._wake = None
            if timer is not None:
                timer.cancel()

    def _take(self, loop: asyncio.AbstractEventLoop) -> list[list[Entry]]:
        """Every lock due now or within the window, in chunks (each chunk of
        one per-node timeout)."""
        slots = self._slot_heap
        buckets = self._slots
        ttl = buckets[slots[0]][0].terms.ttl
        last = int((loop.time() + min(WINDOW, ttl / 30)) / SLOT)
        now = self._redlock.clock()
        groups: dict[float, list[Entry]] = {}
        while slots and slots[0] <= last:
            slot = heapq.heappop(slots)
            for entry in buckets.pop(slot):
                if not entry.active or entry.slot != slot:
                    continue  # removed since it was scheduled
                entry.slot = -1
                lock = entry.lock
                if lock._released or lock._lost_reason is not None:
                    self._drop(entry)
                elif now >= lock.valid_until:
                    self._drop(entry)
                    lock._mark_lost("its validity ran out")
                else:
                    if lock.ttl != entry.terms.ttl:  # extended by hand, new TTL
                        entry.terms = self._terms_for(lock.ttl)
                    timeout = entry.terms.node_timeout
                    group = groups.get(timeout)
                    if group is None:
                        group = groups[timeout] = []
                    group.append(entry)
        return [
            entries[i : i + CHUNK]
            for entries in groups.values()
            for i in range(0, len(entries), CHUNK)
        ]

    def _send(self, loop: asyncio.AbstractEventLoop, entries: list[Entry]) -> None:
        """Extend ``entries`` (one chunk): one request to every node, now."""
        rl = self._redlock
        kept = []
        for e in entries:  # removed, released or lost since _take?
            if e.active:
                if e.lock._released or e.lock._lost_reason is not None:
                    self._drop(e)
                else:
                    kept.append(e)
        entries = kept
        if not entries:
            return
        start = rl.clock()  # before sending: the validity counts from here
        # As in Lock.extend: no answer after a current deadline can count.
        earliest = min(e.lock.valid_until for e in entries)
        timeout = max(0.0, min(entries[0].terms.node_timeout, earliest - start))
        chunk = _Chunk(loop, entries, self._n, start, timeout)
        items: list[tuple[bytes, bytes, int]] = []
        pending = self._pending
        for e in entries:
            lock = e.lock
            e.chunk = chunk
            e.deadline = lock.valid_until
            e.yes = e.no = e.bad = 0
            e.decided = False
            outcomes = e.outcomes
            if outcomes:
                outcomes[:] = pending  # reused: no garbage per lock per batch
            else:
                outcomes = e.outcomes = list(pending)
            lock._outcomes = outcomes
            items.append((lock.key, lock.token, e.terms.px))
        payload = None  # encoded once for every node that can post it
        posts = rl._fleet.posts
        for i, node in enumerate(rl.nodes):
            prev = {t for e in entries if not (t := e.lock._tails[i]).done()}
            post = posts[i]
            fut = None
            if post is not None and not prev:
                if payload is None:
                    payload = extend_many_payload(items)
                hook = partial(self._on_reply, chunk, i, node)
                fut = post(payload, None, EXTEND_MANY, hook)
            if fut is None:
                fut = rl._spawn(_ask(node, items, prev, chunk.answers, i))
                fut.add_done_callback(partial(self._on_answer, chunk, i, node))
            chunk.tasks.append(fut)
            chunk.timers.append(loop.call_later(timeout, chunk.expire, i))
        self.requests += self._n
        self.extensions += len(entries)
        tails = chunk.tasks
        for e in entries:
            e.lock._tails = tails

    # -- answers -------------------------------------------------------------------

    def _on_reply(
        self, chunk: _Chunk, i: int, node: Node, fut: asyncio.Future[Any]
    ) -> None:
        """A posted request's raw reply: one integer per key."""
        if not fut.cancelled() and fut.exception() is None:
            reply = fut.result()
            if isinstance(reply, list):
                chunk.answers[i] = [r == 1 for r in reply]
        self._on_answer(chunk, i, node, fut)

    def _on_answer(
        self, chunk: _Chunk, i: int, node: Node, task: asyncio.Future[Any]
    ) -> None:
        chunk.timers[i].cancel()
        try:
            self._tally(chunk, i, node, task)
        except Exception as exc:  # a bug: do not hold these locks silently
            logger.exception("auto-extension failed")
            for e in chunk.entries:
                if e.chunk is chunk and e.active:
                    self._drop(e)
                    e.lock._mark_lost(f"auto-extension failed: {exc!r}")

    def _tally(
        self, chunk: _Chunk, i: int, node: Node, task: asyncio.Future[Any]
    ) -> None:
        """Count node ``i``'s answer for every lock of the chunk; decide those
        whose outcome it settles."""
        rl = self._redlock
        entries = chunk.entries
        answers: list[bool] | None = None
        failed: NodeOutcome | None = None
        if task.cancelled():
            if chunk.expired[i]:
                err = NodeError(
                    node.name, f"no reply within {chunk.timeout * 1000:.0f} ms"
                )
                err.__cause__ = TimeoutError()
                failed = NodeOutcome(node.name, Vote.TIMEOUT, err)
            else:
                err = NodeError(node.name, "request cancelled (client closing)")
                failed = NodeOutcome(node.name, Vote.ERROR, err)
        elif (exc := task.exception()) is not None:
            err = NodeError(node.name, describe(exc, EXTEND_MANY))
            err.__cause__ = exc
            failed = NodeOutcome(node.name, Vote.ERROR, err)
        else:
            answers = chunk.answers[i]
            if answers is None or len(answers) != len(entries):
                got = "no" if answers is None else len(answers)
                err = NodeError(
                    node.name, f"extend_many gave {got} answers for {len(entries)} keys"
                )
                failed = NodeOutcome(node.name, Vote.ERROR, err)
                answers = None
        fleet = rl._fleet
        if answers is not None:
            if fleet.failing[i]:
                fleet.recovered(i)
        elif not task.cancelled() or chunk.expired[i]:  # not our own closing
            assert failed is not None
            fleet.failed(i, failed)
        # A yes always counts: a node that lost its data no longer has the
        # key, so it cannot extend it (the quarantine is for acquiring).
        yes = self._yes[i]
        no = self._no[i]
        now = rl.clock()
        since = chunk.loop.time() - now  # loop time = this clock's time + since
        needed = rl.quorum
        for k, e in enumerate(entries):
            if e.chunk is not chunk:
                continue  # already in a later batch: this answer is stale
            if answers is None:
                assert failed is not None
                e.bad += 1
                e.outcomes[i] = failed
            elif answers[k]:
                e.yes += 1
                e.outcomes[i] = yes
            else:
                e.no += 1
                e.outcomes[i] = no
            if not e.decided and decide(self._n, needed, e.yes, e.no + e.bad) is not (
                Decision.PENDING
            ):
                e.decided = True
                self._decide(e, chunk.start, now, since)

    def _decide(self, e: Entry, start: float, now: float, since: float) -> None:
        """Act on the decided vote of one lock: new validity, retry, or lost."""
        lock = e.lock
        if not e.active:
            return
        if lock._released or lock._lost_reason is not None:
            self._drop(e)
            return
        terms = e.terms
        if e.yes >= self._redlock.quorum and now < e.deadline:
            new_deadline = start + terms.validity
            if now < new_deadline:
                lock.valid_until = new_deadline
                self._schedule(e, start + terms.due + since)
                return
        if now >= e.deadline:
            why = "its validity ran out before a quorum confirmed the extension"
        elif e.no >= self._redlock.quorum:
            why = f"the key is gone or taken on {e.no} of {self._n} nodes"
        elif lock.valid_until - now > terms.node_timeout + terms.gap:
            # Not this time; try again while an attempt can still finish in time.
            self._schedule(e, now + terms.gap + since)
            return
        else:
            why = "no quorum extended it before its validity would run out"
        self._drop(e)
        lock._mark_lost(why)


def _set(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
