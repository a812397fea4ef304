"""Many locks held at once under auto-extension, on real redis-server nodes: the
batched extender keeps every one of them, with far fewer requests than locks."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from redlock_aio import AsyncRedlock, Lock, LockNotAcquired

from .helpers import lock_keys

if TYPE_CHECKING:
    from redlock_aio.testing import LocalCluster

pytestmark = pytest.mark.integration

COUNT = 1000
#: Long enough that a loaded 2-core machine (asyncio debug mode, other runs on
#: the same cores) does not stall the loop for a third of it.
TTL = 6.0
#: Blocks that end together: thousands of releases in one loop turn can stall
#: the loop past the per-node timeout on a loaded machine; that is the release
#: path's limit, not the extender's, so the blocks end in waves.
WAVE = 100


async def test_1000_blocks_held_for_2_ttls_none_lost(cluster: LocalCluster) -> None:
    lost: list[Lock] = []
    entered: list[Lock] = []
    all_in = asyncio.Event()
    stops = [asyncio.Event() for _ in range(0, COUNT, WAVE)]

    async with (
        # node_timeout: generous for a loaded 2-core machine in asyncio debug mode.
        AsyncRedlock(
            cluster.urls, ttl=TTL, node_timeout=0.5, restart_quarantine=0
        ) as rl,
        AsyncRedlock(cluster.urls, ttl=TTL, restart_quarantine=0) as other,
    ):

        async def hold(i: int) -> None:
            async with rl.lock(f"many:{i}", on_lost=lost.append) as lock:
                entered.append(lock)
                if len(entered) == COUNT:
                    all_in.set()
                await stops[i // WAVE].wait()

        tasks = [asyncio.create_task(hold(i)) for i in range(COUNT)]
        try:
            await check(cluster, rl, other, tasks, stops, entered, lost, all_in)
        finally:
            for stop in stops:
                stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert lock_keys(cluster) == [0, 0, 0]


async def check(
    cluster: LocalCluster,
    rl: AsyncRedlock,
    other: AsyncRedlock,
    tasks: list[asyncio.Task[None]],
    stops: list[asyncio.Event],
    entered: list[Lock],
    lost: list[Lock],
    all_in: asyncio.Event,
) -> None:
    """Held for two TTLs: none lost, all still theirs, few requests; then the
    blocks end, in waves, and every lock is released."""
    await asyncio.wait_for(all_in.wait(), 120)
    await asyncio.sleep(2 * TTL)
    assert lost == []
    # Each lock on a majority at least (a node that was slow to answer an
    # acquire may have timed out).
    assert sum(lock_keys(cluster)) >= 2 * COUNT
    assert all(lock.held for lock in entered)
    # Still theirs: a contender gets none of them.
    for i in range(0, COUNT, 250):
        with pytest.raises(LockNotAcquired):
            await other.acquire(f"many:{i}", blocking=False)
    extender = rl._keeper
    assert extender is not None
    assert extender.registered == COUNT
    # Every lock was extended several times; fewer requests than locks.
    assert extender.batches * 3 < COUNT
    results: list[BaseException | None] = []
    for w, stop in enumerate(stops):
        stop.set()
        wave = tasks[w * WAVE : (w + 1) * WAVE]
        results += await asyncio.gather(*wave, return_exceptions=True)
    assert results == [None] * COUNT
    assert all(lock.released for lock in entered)
    assert extender.registered == 0


async def test_5000_releases_at_once_all_confirm(cluster: LocalCluster) -> None:
    """A burst of releases in one turn of the loop is the client's own backlog,
    not a failing node: deadlines count from when the requests went out, and
    every release is confirmed with the default per-node timeout."""
    loop = asyncio.get_running_loop()
    debug = loop.get_debug()
    # A burst is about speed: debug mode records a traceback for every future.
    loop.set_debug(False)
    try:
        async with AsyncRedlock(cluster.urls, ttl=10.0, restart_quarantine=0) as rl:
            locks: list[Lock] = []
            for start in range(0, 5000, 500):
                locks += await asyncio.gather(
                    *(rl.acquire(f"burst:{i}") for i in range(start, start + 500))
                )
            results = await asyncio.gather(
                *(lock.release() for lock in locks), return_exceptions=True
            )
            assert [r for r in results if r is not None] == []
            assert all(lock.released for lock in locks)
    finally:
        loop.set_debug(debug)
    assert lock_keys(cluster) == [0] * len(cluster)
