"""What a lock held in a ``lock()`` block keeps alive for the garbage
collector: every full collection scans every tracked object, so 100,000 held
locks at 26 objects each made collections of seconds, and a client busy that
long in one turn of its loop loses locks (benchmark scenario 7, a storm of
100,000 blocks). A held lock's share is counted here against the same number
of tasks waiting in the same way without a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import TYPE_CHECKING

from redlock_aio import AsyncRedlock, Lock, Vote
from redlock_aio.testing import InMemoryNode

from .test_no_cycles import FakeServer, InProcessNode

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from redlock_aio import MuxNode

HELD = 500
#: GC-tracked objects per held lock beyond those of a task waiting in a trivial
#: ``async with`` (measured: 4, from the Lock, its LockContext, the keeper's
#: registration, the body's cancel scope and the latest request's outcomes,
#: less the trivial context manager's own). It was 11 while the block kept
#: what it needs only to enter (the bound acquire, the keeper's factory), the
#: lock kept its watcher as a bound method in a list, and a new lock kept all
#: of its acquire's requests while the slowest one was in flight.
MOST_PER_LOCK = 7


class SlowServer(FakeServer):
    """Answers a turn of the loop later than the others: a quorum decides
    before it, so a new lock still has a request in flight on it."""

    def write(self, data: bytes) -> None:  # type: ignore[override]
        loop = asyncio.get_running_loop()
        loop.call_soon(super().write, data)


class SlowNode(InProcessNode):
    __slots__ = ()

    server = SlowServer


def nodes() -> list[MuxNode]:
    return [
        InProcessNode(host="127.0.0.1", port=7000),
        InProcessNode(host="127.0.0.1", port=7001),
        SlowNode(host="127.0.0.1", port=7002),
    ]


async def tracked_while_waiting(
    block: Callable[[int], contextlib.AbstractAsyncContextManager[object]],
) -> int:
    """GC-tracked objects while HELD tasks wait inside ``block(i)``."""
    go = asyncio.Event()
    all_in = asyncio.Event()
    inside = 0

    async def one(i: int) -> None:
        nonlocal inside
        async with block(i):
            inside += 1
            if inside == HELD:
                all_in.set()
            await go.wait()

    gc.collect()
    before = len(gc.get_objects())
    tasks = [asyncio.create_task(one(i)) for i in range(HELD)]
    await all_in.wait()
    for _ in range(5):  # the slow node's replies
        await asyncio.sleep(0)
    gc.collect()
    during = len(gc.get_objects())
    go.set()
    await asyncio.gather(*tasks)
    return during - before


@contextlib.asynccontextmanager
async def nothing(i: int) -> AsyncIterator[None]:
    yield


async def test_a_held_lock_keeps_few_objects_for_the_collector() -> None:
    async with AsyncRedlock(nodes(), restart_quarantine=0) as rl:
        async with rl.lock("warm-up"):  # connections, scripts, the keeper
            pass
        baseline = await tracked_while_waiting(nothing)
        # A TTL of a minute: no extension is under way while they are counted.
        with_locks = await tracked_while_waiting(lambda i: rl.lock(f"k{i}", ttl=60))
    per_lock = (with_locks - baseline) / HELD
    assert per_lock <= MOST_PER_LOCK, per_lock


async def renewed_everywhere(locks: list[Lock]) -> None:
    """Until every lock's latest request has a yes from every node."""
    while any(o.vote is not Vote.YES for lock in locks for o in lock.outcomes):  # noqa: ASYNC110
        await asyncio.sleep(0.005)


async def test_keeping_locks_allocates_nothing_per_lock_that_outlives_a_batch() -> None:
    """Every extension of the held locks must not leave a new GC-tracked object
    per lock behind: it would survive until the next one, be promoted to the
    oldest generation, and every 25 % of growth there triggers a full
    collection (1 s with 100,000 locks held, in one turn of the loop: scenario
    5b's worst acquire). Counted with the collector off: the objects the locks
    refer to that are in the youngest generation, allocated during the batches
    (shared ones once; whatever else the process allocated meanwhile, such as
    captured log records, is not counted)."""
    # The test kit's in-memory nodes (each MuxNode above keeps its keys per
    # connection, and renewals go on a second connection of their own).
    memory = [InMemoryNode(f"memory{i}") for i in range(3)]
    async with AsyncRedlock(memory, restart_quarantine=0) as rl:
        go = asyncio.Event()
        all_in = asyncio.Event()
        locks: list[Lock] = []

        async def one(i: int) -> None:
            # Extended every 0.4 s; in-memory nodes answer at once.
            async with rl.lock(f"k{i}", ttl=1.2) as lock:
                locks.append(lock)
                if len(locks) == HELD:
                    all_in.set()
                await go.wait()

        tasks = [asyncio.create_task(one(i)) for i in range(HELD)]
        try:
            await all_in.wait()
            keeper = rl._keeper
            assert keeper is not None
            # One batch of them all first: every lock's state is a batch's then.
            first = keeper.extensions + HELD
            while keeper.extensions < first:  # noqa: ASYNC110 - a counter
                await asyncio.sleep(0.01)
            for _ in range(5):  # the slow node's replies
                await asyncio.sleep(0)
            gc.collect()
            gc.disable()
            try:
                start = keeper.extensions
                while keeper.extensions < start + 2 * HELD:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                # Until the latest batch is answered everywhere (its replies
                # take a few turns of the loop, more on a loaded machine).
                await asyncio.wait_for(renewed_everywhere(locks), 30)
                young = {id(o) for o in gc.get_objects(generation=0)}
                kept = {
                    id(o)
                    for lock in locks
                    for o in gc.get_referents(lock)
                    if id(o) in young
                }
            finally:
                gc.enable()
        finally:
            go.set()
            await asyncio.gather(*tasks)
    assert not any(lock.lost for lock in locks)
    assert len(kept) < HELD // 5, len(kept)
