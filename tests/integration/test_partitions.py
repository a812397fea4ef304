"""Partition scenarios: one client cut off from some nodes by a FaultProxy
while other clients reach every node. Pass criteria in each docstring; the
scenario table is in README.md beside this file."""

from __future__ import annotations

import asyncio
import functools
import random
import time
from typing import TYPE_CHECKING

import pytest

from redlock_aio import AsyncRedlock, Lock, LockLost, LockNotAcquired
from redlock_aio.testing import FaultProxy, LocalCluster

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

from .helpers import keys, no_key

pytestmark = [pytest.mark.integration, pytest.mark.faults]

Redlock = functools.partial(AsyncRedlock, restart_quarantine=0)


@pytest.fixture
async def proxies(cluster: LocalCluster) -> AsyncIterator[list[FaultProxy]]:
    """One proxy per node, for the client under test only."""
    started = [await FaultProxy("127.0.0.1", s.port).start() for s in cluster]
    try:
        yield started
    finally:
        for proxy in started:
            await proxy.aclose()


async def test_holder_cut_off_from_a_minority_keeps_the_lock(
    cluster: LocalCluster, proxies: list[FaultProxy]
) -> None:
    """Blackholed from 1 of 3 nodes, the holder keeps extending on the other
    two for 4 TTLs; a contender that reaches every node never gets a quorum."""
    async with (
        Redlock([p.url for p in proxies], ttl=1.0, node_timeout=0.2) as holder,
        Redlock(cluster.urls, ttl=1.0, node_timeout=0.2) as contender,
    ):
        async with holder.lock("r") as lock:
            proxies[0].blackhole()
            for _ in range(8):
                await asyncio.sleep(0.5)
                assert lock.held
                with pytest.raises(LockNotAcquired):
                    await contender.acquire("r", blocking=False)
        assert not lock.lost
    assert keys(cluster)[1:] == [None, None]
    # Node 0 was cut off when the lock was released: its key expires by TTL.
    await asyncio.sleep(1.2)
    assert await no_key(cluster)


async def test_holder_cut_off_from_a_majority_loses_it_before_the_deadline(
    cluster: LocalCluster, proxies: list[FaultProxy]
) -> None:
    """Blackholed from 2 of 3 nodes: the loss is signalled before the local
    deadline and the block raises LockLost; a contender waiting meanwhile gets
    the lock only after the holder's last validity is over."""
    signalled: list[tuple[float, float]] = []

    def on_lost(lock: Lock) -> None:
        signalled.append((time.monotonic(), lock.valid_until))

    async with (
        Redlock([p.url for p in proxies], ttl=1.0, node_timeout=0.2) as holder,
        Redlock(cluster.urls, ttl=1.0, node_timeout=0.2, retry_delay=0.01) as other,
    ):
        held = asyncio.Event()

        async def hold() -> None:
            async with holder.lock("r", on_lost=on_lost):
                held.set()
                proxies[0].blackhole()
                proxies[1].blackhole()
                await asyncio.sleep(30)

        holding = asyncio.create_task(hold())
        await held.wait()
        contender = await other.acquire("r", timeout=10.0)
        granted = time.monotonic()
        with pytest.raises(LockLost):
            await holding
        [(lost_at, deadline)] = signalled
        assert lost_at < deadline
        assert granted >= deadline
        await contender.release()
    for proxy in proxies:
        proxy.heal()
    await asyncio.sleep(1.2)
    assert await no_key(cluster)


async def test_replies_slower_than_the_validity_never_make_a_lock(
    cluster: LocalCluster, proxies: list[FaultProxy]
) -> None:
    """Replies delayed around and past the validity budget: every acquire
    either fails or returns a lock with positive validity; keys it could not
    take back expire by their TTL."""
    ttl = 0.5
    rng = random.Random(7)
    async with Redlock([p.url for p in proxies], ttl=ttl, node_timeout=1.0) as rl:
        for _ in range(12):
            for proxy in proxies:
                proxy.add_latency(rng.uniform(0.2, 0.3), direction="reply")
            try:
                lock = await rl.acquire("r", blocking=False)
            except LockNotAcquired:
                continue
            assert lock.remaining() > 0
            await lock.release()
        for proxy in proxies:
            proxy.add_latency(0.6, direction="reply")  # past the whole TTL
        with pytest.raises(LockNotAcquired):
            await rl.acquire("r", blocking=False)
        for proxy in proxies:
            proxy.heal()
    await asyncio.sleep(ttl + 0.3)
    assert await no_key(cluster)
