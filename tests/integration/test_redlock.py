"""AsyncRedlock against real redis-server processes: round trips, mutual
exclusion, quorum over every subset of occupied nodes, node failures, a hung
node, auto-extension, loss, cancellation and expiry."""

from __future__ import annotations

import asyncio
import functools
import time

import anyio
import pytest
import redis.exceptions
from redis.asyncio import Redis

from redlock_aio import (
    AsyncRedlock,
    LockLost,
    LockNotAcquired,
    Vote,
)
from redlock_aio._scripts import EXTEND, EXTEND_SHA, RELEASE, RELEASE_SHA
from redlock_aio.testing import HungNode, LocalCluster

from .helpers import keys, lock_keys, no_key, settle

pytestmark = pytest.mark.integration

# The suite starts its nodes itself, so nothing held locks on them before: the
# restart quarantine (tested in test_quarantine.py) would only delay these tests.
Redlock = functools.partial(AsyncRedlock, restart_quarantine=0)


async def test_acquire_extend_release_round_trip(
    cluster: LocalCluster, redlock: AsyncRedlock
) -> None:
    lock = await redlock.acquire("orders:42", ttl=5.0)
    assert lock.held
    assert 0 < lock.remaining() <= 5.0
    await settle(lock)
    assert keys(cluster, b"orders:42") == [lock.token] * 3
    for server in cluster:
        assert 0 < int(server.command("PTTL", "orders:42")) <= 5000  # type: ignore[call-overload]
    left = await lock.extend(8.0)
    await settle(lock)
    assert 5.0 < left <= 8.0
    for server in cluster:
        assert int(server.command("PTTL", "orders:42")) > 5000  # type: ignore[call-overload]
    await lock.release()
    assert lock.released
    assert not lock.held
    assert await no_key(cluster, b"orders:42")
    await lock.release()  # a second release is a no-op


async def test_lock_block_round_trip_with_client_objects(cluster: LocalCluster) -> None:
    clients = [Redis.from_url(url) for url in cluster.urls]
    try:
        async with Redlock(clients, ttl=5.0) as rl:
            async with rl.lock("orders:42") as lock:
                await settle(lock)
                assert keys(cluster, b"orders:42") == [lock.token] * 3
            assert await no_key(cluster, b"orders:42")
        # Clients passed in are the caller's: still usable after aclose().
        assert await clients[0].ping()
    finally:
        for client in clients:
            await client.aclose()


async def test_scripts_sha_match_script_load(cluster: LocalCluster) -> None:
    assert cluster[0].command("SCRIPT", "LOAD", RELEASE) == RELEASE_SHA.encode()
    assert cluster[0].command("SCRIPT", "LOAD", EXTEND) == EXTEND_SHA.encode()


async def test_noscript_after_script_flush_recovers(
    cluster: LocalCluster, redlock: AsyncRedlock
) -> None:
    lock = await redlock.acquire("r")
    await lock.extend()
    for server in cluster:
        server.command("SCRIPT", "FLUSH")
    await lock.extend()
    await lock.release()
    assert await no_key(cluster)


async def test_mutual_exclusion_read_sleep_write(cluster: LocalCluster) -> None:
    """24 tasks on 4 independent clients increment a shared counter with a
    read-sleep-write inside the lock: no update is lost, and no two holders
    ever overlap."""
    counter = 0
    holders = 0
    max_holders = 0

    async def worker(rl: AsyncRedlock) -> None:
        nonlocal counter, holders, max_holders
        for _ in range(3):
            async with rl.lock("counter", ttl=5.0):
                holders += 1
                max_holders = max(max_holders, holders)
                value = counter
                await asyncio.sleep(0.002)
                counter = value + 1
                holders -= 1

    redlocks = [
        Redlock(cluster.urls, ttl=5.0, node_timeout=1.0, retry_delay=0.005)
        for _ in range(4)
    ]
    try:
        async with anyio.create_task_group() as tg:
            for i in range(24):
                tg.start_soon(worker, redlocks[i % 4])
    finally:
        for rl in redlocks:
            await rl.aclose()
    assert counter == 24 * 3
    assert max_holders == 1


@pytest.mark.parametrize("n", [3, 5])
async def test_every_subset_of_occupied_nodes(
    n: int, cluster: LocalCluster, cluster5: LocalCluster
) -> None:
    """For every set of nodes already holding the key (for someone else), the
    acquire succeeds iff the free nodes make a quorum, never touches the other
    holder's keys, and leaves no key of its own when it fails."""
    nodes = cluster if n == 3 else cluster5
    quorum = n // 2 + 1
    async with Redlock(nodes.urls, ttl=5.0, node_timeout=1.0) as rl:
        for mask in range(1 << n):
            occupied = [i for i in range(n) if mask >> i & 1]
            for i in occupied:
                nodes[i].command("SET", "r", "other", "PX", 60000)
            free = n - len(occupied)
            if free >= quorum:
                lock = await rl.acquire("r", blocking=False)
                await settle(lock)
                values = keys(nodes)
                assert all(
                    values[i] == (b"other" if i in occupied else lock.token)
                    for i in range(n)
                )
                await lock.release()
            else:
                with pytest.raises(LockNotAcquired) as info:
                    await rl.acquire("r", blocking=False)
                votes = [o.vote for o in info.value.outcomes]
                assert Vote.ERROR not in votes
                assert Vote.TIMEOUT not in votes
            values = keys(nodes)
            assert values == [b"other" if i in occupied else None for i in range(n)]
            nodes.flushall()


async def test_one_node_killed_still_acquires_and_extends(
    cluster: LocalCluster, redlock: AsyncRedlock
) -> None:
    cluster[0].kill()
    lock = await redlock.acquire("r")
    await lock.extend()
    assert await settle(lock) == [None, True, True]
    await lock.release()
    assert keys(cluster)[1:] == [None, None]


async def test_majority_down_fails_with_reasons(
    cluster: LocalCluster, redlock: AsyncRedlock
) -> None:
    cluster[0].kill()
    cluster[1].kill()
    with pytest.raises(LockNotAcquired) as info:
        await redlock.acquire("r", blocking=False)
    outcomes = info.value.outcomes
    assert [o.vote for o in outcomes[:2]] == [Vote.ERROR, Vote.ERROR]
    assert all(
        isinstance(o.error.__cause__, redis.exceptions.ConnectionError)
        for o in outcomes[:2]
        if o.error
    )
    assert cluster[0].url.split("//")[1].split("/")[0] in str(info.value)
    assert keys(cluster)[2] is None


async def test_hung_node_costs_at_most_the_node_timeout(cluster: LocalCluster) -> None:
    with HungNode() as hung_a, HungNode() as hung_b, HungNode() as hung_c:
        # A healthy majority: the quorum decides without waiting for the hung
        # node, even with a per-node timeout far longer than this test.
        async with Redlock(
            [*cluster.urls[:2], hung_a.url], ttl=120.0, node_timeout=60.0
        ) as rl:
            t0 = time.monotonic()
            lock = await rl.acquire("r", blocking=False)
            # Decided without the hung node: its vote is still pending (a
            # timeout would take the 60 s per-node timeout).
            assert [o.vote for o in lock.outcomes] == [
                Vote.YES,
                Vote.YES,
                Vote.PENDING,
            ]
            assert time.monotonic() - t0 < 30.0
            await lock.extend()
            assert [o.vote for o in lock.outcomes] == [
                Vote.YES,
                Vote.YES,
                Vote.PENDING,
            ]
            assert time.monotonic() - t0 < 30.0
            # release() waits for every node up to the per-node timeout: let
            # the hung node fail fast instead, by closing its listener.
            hung_a.stop()
            await lock.release()
            assert lock.released
        # A hung majority: the attempt fails once the per-node timeout is over.
        async with Redlock(
            [cluster.urls[0], hung_b.url, hung_c.url], ttl=10.0, node_timeout=0.3
        ) as rl:
            t0 = time.monotonic()
            with pytest.raises(LockNotAcquired) as info:
                await rl.acquire("r", blocking=False)
            elapsed = time.monotonic() - t0
            assert elapsed >= 0.3
            assert [o.vote for o in info.value.outcomes] == [
                Vote.YES,
                Vote.TIMEOUT,
                Vote.TIMEOUT,
            ]
    assert await no_key(cluster)


async def test_auto_extension_keeps_the_lock_for_several_ttls(
    cluster: LocalCluster,
) -> None:
    async with (
        Redlock(cluster.urls, ttl=1.0, node_timeout=0.25) as holder,
        Redlock(cluster.urls, ttl=1.0, node_timeout=0.25) as other,
    ):
        async with holder.lock("r") as lock:
            first_deadline = lock.valid_until
            for _ in range(8):  # 4 s: four TTLs
                await asyncio.sleep(0.5)
                assert lock.held
                with pytest.raises(LockNotAcquired):
                    await other.acquire("r", blocking=False)
            assert lock.valid_until > first_deadline + 3.0
        assert lock.released
        await (await other.acquire("r", blocking=False)).release()


async def test_losing_the_majority_cancels_the_body(cluster: LocalCluster) -> None:
    async with Redlock(cluster.urls, ttl=1.5, node_timeout=0.25) as rl:
        reached = False
        t0 = time.monotonic()
        with pytest.raises(LockLost):
            async with rl.lock("r") as lock:
                cluster[0].kill()
                cluster[1].kill()
                await asyncio.sleep(60)
                reached = True
        assert not reached
        assert lock.lost
        # Signalled by the local validity deadline, not by the 60 s sleep.
        assert time.monotonic() - t0 < 30


async def test_cancelled_acquire_mid_flight_leaves_no_key(
    cluster: LocalCluster, redlock: AsyncRedlock
) -> None:
    for server in cluster:
        server.command("CLIENT", "PAUSE", 300, "ALL")
    with anyio.move_on_after(0.05) as scope:
        await redlock.acquire("r")
    assert scope.cancelled_caught
    # The SETs were queued in the paused servers; the shielded cleanup waited
    # for them and deleted the keys before the cancellation finished.
    assert keys(cluster) == [None] * 3


async def test_cancelled_body_releases(
    cluster: LocalCluster, redlock: AsyncRedlock
) -> None:
    entered = asyncio.Event()

    async def body() -> None:
        async with redlock.lock("r") as lock:
            await settle(lock)
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(body())
    await entered.wait()
    assert keys(cluster) != [None] * 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await no_key(cluster)


async def test_cancelled_release_still_releases(
    cluster: LocalCluster, redlock: AsyncRedlock
) -> None:
    lock = await redlock.acquire("r")
    for server in cluster:
        server.command("CLIENT", "PAUSE", 200, "ALL")
    with anyio.move_on_after(0.02):
        await lock.release()
    assert lock.released
    assert await no_key(cluster)


async def test_quorum_returns_early_and_a_late_set_is_still_released(
    cluster: LocalCluster, redlock: AsyncRedlock
) -> None:
    """The acquire is decided by the two fast nodes while the third is under
    CLIENT PAUSE: when it returns, the paused node's vote is still pending
    (no wall-clock bound, so a loaded machine cannot flake it). The late SET
    is still released."""
    cluster[2].command("CLIENT", "PAUSE", 400, "ALL")
    lock = await redlock.acquire("r")
    # Returned early: the two fast nodes said yes, the paused one has not
    # answered yet (an acquire that waited for every node would see its yes).
    assert [o.vote for o in lock.outcomes] == [Vote.YES, Vote.YES, Vote.PENDING]
    # The third SET lands later. release() returns once the two have
    # confirmed; the third node's release waits, chained after its SET, and
    # deletes the late key.
    await lock.release()
    assert keys(cluster)[:2] == [None, None]
    await settle(lock)
    assert await no_key(cluster)


async def test_unreleased_lock_expires_after_its_ttl(cluster: LocalCluster) -> None:
    async with Redlock(cluster.urls, ttl=0.5, node_timeout=0.1) as rl:
        lock = await rl.acquire("r")
        await asyncio.sleep(0.8)
        assert lock.lost
        assert await no_key(cluster)
        await (await rl.acquire("r", blocking=False)).release()


async def test_timeout_of_a_blocking_acquire(
    cluster: LocalCluster, redlock: AsyncRedlock
) -> None:
    held = await redlock.acquire("r")
    with pytest.raises(LockNotAcquired, match=r"within 0\.3 s") as info:
        await redlock.acquire("r", timeout=0.3)
    assert info.value.attempts > 1
    await held.release()


async def test_waiter_gets_the_lock_after_release(
    cluster: LocalCluster, redlock: AsyncRedlock
) -> None:
    held = await redlock.acquire("r")
    waiter = asyncio.create_task(redlock.acquire("r", timeout=10))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await held.release()
    lock = await waiter
    assert lock.held
    await lock.release()


@pytest.mark.parametrize("n_nodes", [1, 2])
async def test_fewer_than_three_nodes_work_with_a_warning(
    n_nodes: int, cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    async with Redlock(cluster.urls[:n_nodes]) as rl, rl.lock("r"):
        pass
    assert "odd number >= 3" in caplog.text


async def test_many_concurrent_locks_on_distinct_keys(cluster: LocalCluster) -> None:
    """More concurrent locks than the pool has connections: they queue, none fails."""
    async with Redlock(cluster.urls, ttl=10.0, node_timeout=5.0) as rl:
        locks = await asyncio.gather(*(rl.acquire(f"k{i}") for i in range(200)))
        assert lock_keys(cluster) == [200] * 3
        await asyncio.gather(*(lock.release() for lock in locks))
    assert lock_keys(cluster) == [0] * 3
