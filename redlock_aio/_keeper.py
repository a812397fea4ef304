"""Auto-extension scheduling: when each lock held in an ``async with`` block is
extended, in batches: a few requests per tick, not a task and a round trip per
lock.

One :class:`Keeper` per :class:`~._redlock.AsyncRedlock`, created and closed by
it, runs one loop task. A lock is due when a third of its TTL has passed since
its validity was last set; locks wait in 10 ms time slots (no allocation per
lock). The loop sleeps until the earliest slot, takes every lock due within a
short window, and hands them to ``extend_batch`` in chunks of at most
:data:`CHUNK` locks of one per-node timeout, one chunk per turn of the event
loop, with at most :data:`IN_FLIGHT` chunks not yet decided. The extension
itself, and its rule, are the algorithm's
(``AsyncRedlock._extend_batch``, the same rule as ``Lock.extend``); the keeper
only reschedules each lock by the verdict: renewed, the next extension a third
of the TTL on; missed, a retry shortly while one can still finish in time, else
the lock is lost; lost, nothing more.

Due times live on the event loop's clock (what sleeping uses); validity lives on
the AsyncRedlock's clock. Delays are differences on the latter, so an injected
clock still drives when locks fall due.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeAlias, final

from ._fanout import wait_tasks_shielded
from ._lock import Lock
from ._quorum import Renewal

logger = logging.getLogger("redlock_aio")

#: Most locks in one ``extend_many`` request: bounds the time a node spends in
#: one script call and the size of one request and reply.
CHUNK = 1000
#: Chunks in flight at most (sent, some lock not decided yet). A node runs
#: every request in order: a chunk's script (1,000 keys, about a millisecond)
#: delays every request of this client behind it, and 100 chunks sent at once
#: (100,000 locks held) made a fresh acquire wait 60-80 ms for them. Four keep
#: the connection busy while one is answered: 4,000 locks per round trip.
IN_FLIGHT = 4
#: A tick also takes the locks due within this many seconds (at most a 30th of
#: the TTL), so that locks acquired a little apart share a batch.
WINDOW = 0.05
#: Width of the time slots locks are scheduled in, seconds: a lock falls due at
#: most this much before its time.
SLOT = 0.01

_LOST_CLOSED = "the AsyncRedlock was closed"

#: Called with each lock's verdict: its index in the batch, the verdict, why
#: (for missed and lost), and the start of the extension (the clock's time).
#: A lost lock is not marked lost yet: the keeper does, if it still keeps it.
OnResult: TypeAlias = Callable[[int, Renewal, str, float], None]
#: Extends a batch of locks; calls back once per lock as it is decided.
ExtendBatch: TypeAlias = Callable[[Sequence[Lock], OnResult], None]
Spawn: TypeAlias = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


@final
class Registration:
    """One lock kept alive by the keeper."""

    __slots__ = ("active", "lock", "slot")

    def __init__(self, lock: Lock) -> None:
        self.lock = lock
        self.active = True
        #: the time slot it is scheduled in; -1: not scheduled (new or in flight)
        self.slot = -1


@final
class Keeper:
    """Keeps the registered locks of one AsyncRedlock alive, in batches.

    :meth:`add` a lock when its block starts, :meth:`remove` it when the block
    ends (before releasing it). A lock that cannot be kept is marked lost
    (``Lock._mark_lost``), which tells its holder.

    :param extend_batch: extends locks (see :data:`ExtendBatch`).
    :param clock: the AsyncRedlock's monotonic clock.
    :param spawn: starts a task the AsyncRedlock tracks.
    """

    def __init__(
        self,
        *,
        extend_batch: ExtendBatch,
        clock: Callable[[], float],
        spawn: Spawn,
    ) -> None:
        self._extend_batch = extend_batch
        self._clock = clock
        self._spawn = spawn
        # Locks by the time slot they fall due in, and the slots in a heap.
        self._slots: dict[int, list[Registration]] = {}
        self._slot_heap: list[int] = []
        self._registered: set[Registration] = set()
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None
        # Chunks sent and not yet decided, and the loop's wait for fewer.
        self._in_flight = 0
        self._room: asyncio.Future[None] | None = None
        self._closed = False
        #: batches sent so far, and lock extensions asked for (one per lock per
        #: batch): for tests and monitoring
        self.batches = 0
        self.extensions = 0

    @property
    def registered(self) -> int:
        """How many locks are registered."""
        return len(self._registered)

    # -- registration ------------------------------------------------------------

    def add(self, lock: Lock) -> Registration:
        """Keep ``lock`` alive from now until :meth:`remove` (or until it is lost)."""
        reg = Registration(lock)
        if self._closed:
            # Closing (an acquire that was in flight): no new loop task.
            reg.active = False
            lock._mark_lost(_LOST_CLOSED, warn=False)
            return reg
        loop = asyncio.get_running_loop()
        terms = lock._terms
        # Due a third of the TTL after the start its validity was counted from.
        started = lock.valid_until - terms.validity
        due_in = started + terms.due - self._clock()
        self._registered.add(reg)
        self._schedule(reg, loop.time() + due_in)
        task = self._task
        if task is None or task.done():
            self._task = self._spawn(self._run())
        return reg

    def remove(self, reg: Registration) -> None:
        """Stop extending this lock. A batch in flight still ends (and a release
        is ordered after it), but its verdict no longer touches the lock."""
        if reg.active:
            reg.active = False
            self._registered.discard(reg)
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
        registered = list(self._registered)
        self._registered.clear()
        closing = reason is _LOST_CLOSED  # not news: aclose() says so once
        for reg in registered:
            reg.active = False
            reg.lock._mark_lost(reason, warn=not closing)

    def _schedule(self, reg: Registration, due: float) -> None:
        """Make ``reg`` fall due at loop time ``due`` (or up to one
        :data:`SLOT` earlier): no allocation per lock, O(1) but for a new slot."""
        if self._closed:
            return
        slot = int(due / SLOT)
        reg.slot = slot
        bucket = self._slots.get(slot)
        if bucket is not None:
            bucket.append(reg)
            return
        self._slots[slot] = [reg]
        slots = self._slot_heap
        earliest = not slots or slot < slots[0]
        heapq.heappush(slots, slot)
        if earliest:
            wake = self._wake
            if wake is not None and not wake.done():
                wake.set_result(None)

    def _drop(self, reg: Registration) -> None:
        reg.active = False
        self._registered.discard(reg)

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
                for batch in self._take(loop):
                    while self._in_flight >= IN_FLIGHT:
                        await self._wait_for_room(loop)
                    self._send(loop, batch)
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

    async def _wait_for_room(self, loop: asyncio.AbstractEventLoop) -> None:
        """Until a chunk in flight is decided."""
        room: asyncio.Future[None] = loop.create_future()
        self._room = room
        try:
            await room
        finally:
            self._room = None

    def _chunk_decided(self) -> None:
        self._in_flight -= 1
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)

    def _take(self, loop: asyncio.AbstractEventLoop) -> list[list[Registration]]:
        """Every lock due now or within the window, in chunks (each chunk of
        one per-node timeout)."""
        slots = self._slot_heap
        buckets = self._slots
        ttl = buckets[slots[0]][0].lock.ttl
        last = int((loop.time() + min(WINDOW, ttl / 30)) / SLOT)
        now = self._clock()
        groups: dict[float, list[Registration]] = {}
        while slots and slots[0] <= last:
            slot = heapq.heappop(slots)
            for reg in buckets.pop(slot):
                if not reg.active or reg.slot != slot:
                    continue  # removed since it was scheduled
                reg.slot = -1
                lock = reg.lock
                if lock._released or lock._lost_reason is not None:
                    self._drop(reg)
                elif now >= lock.valid_until:
                    self._drop(reg)
                    lock._mark_lost("its validity ran out")
                else:
                    timeout = lock._terms.node_timeout
                    group = groups.get(timeout)
                    if group is None:
                        group = groups[timeout] = []
                    group.append(reg)
        return [
            regs[i : i + CHUNK]
            for regs in groups.values()
            for i in range(0, len(regs), CHUNK)
        ]

    def _send(self, loop: asyncio.AbstractEventLoop, regs: list[Registration]) -> None:
        """Extend one chunk now (removed, released or lost since they were
        taken: skipped)."""
        kept = []
        for reg in regs:
            if reg.active:
                lock = reg.lock
                if lock._released or lock._lost_reason is not None:
                    self._drop(reg)
                else:
                    kept.append(reg)
        if not kept:
            return
        self.batches += 1
        self.extensions += len(kept)
        since = loop.time() - self._clock()  # loop time = the clock's time + since
        undecided = len(kept)

        def on_result(k: int, verdict: Renewal, why: str, start: float) -> None:
            nonlocal undecided
            undecided -= 1
            if not undecided:
                self._chunk_decided()
            self._decided(kept[k], verdict, why, start, since)

        self._in_flight += 1
        try:
            self._extend_batch([reg.lock for reg in kept], on_result)
        except BaseException:
            if undecided > 0:  # a bug: counted out now, whatever comes later
                undecided = -1
                self._chunk_decided()
            raise

    def _decided(
        self, reg: Registration, verdict: Renewal, why: str, start: float, since: float
    ) -> None:
        """Reschedule one lock by its verdict."""
        if not reg.active:
            return
        lock = reg.lock
        if verdict is Renewal.RENEWED:
            self._schedule(reg, start + lock._terms.due + since)
            return
        if verdict is Renewal.MISSED and not lock._released:
            terms = lock._terms
            now = self._clock()
            if lock.valid_until - now > terms.node_timeout + terms.gap:
                # Not this time; try again while an attempt can still finish in time.
                self._schedule(reg, now + terms.gap + since)
                return
            lock._mark_lost("no quorum extended it before its validity would run out")
        elif verdict is Renewal.LOST:
            lock._mark_lost(why)
        self._drop(reg)


def _set(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
