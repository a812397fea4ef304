"""Restart quarantine: a node that restarted without its keys must not help
grant a lock that is still held elsewhere (Redlock's "delayed restarts" rule,
enforced on the client from each node's uptime)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from redlock_aio import AsyncRedlock, Lock, LockNotAcquired, Vote
from redlock_aio._node import parse_info
from redlock_aio.testing import LocalCluster, RedisServer, free_port

from .helpers import settle

pytestmark = pytest.mark.integration


def unreachable() -> str:
    """A node URL nothing listens on: this client is cut off from that node."""
    return f"redis://127.0.0.1:{free_port()}/0"


async def hold_on_a_and_b(cluster: LocalCluster) -> tuple[AsyncRedlock, Lock]:
    """A holder that reaches nodes A and B only, holding the lock on both."""
    holder = AsyncRedlock(
        [cluster.urls[0], cluster.urls[1], unreachable()],
        ttl=30.0,
        node_timeout=1.0,
        restart_quarantine=0,
    )
    lock = await holder.acquire("r", blocking=False)
    await settle(lock)
    assert cluster[0].command("GET", "r") == lock.token
    assert cluster[1].command("GET", "r") == lock.token
    return holder, lock


async def test_without_quarantine_a_restarted_node_grants_a_held_lock_twice(
    cluster: LocalCluster,
) -> None:
    """The hazard itself: this test expects the violation."""
    holder, lock = await hold_on_a_and_b(cluster)
    cluster[1].restart()  # B comes back at once, empty
    async with AsyncRedlock(
        [unreachable(), cluster.urls[1], cluster.urls[2]],
        ttl=30.0,
        node_timeout=1.0,
        restart_quarantine=0,
    ) as contender:
        second = await contender.acquire("r", blocking=False)
        assert lock.held
        assert second.held  # two holders at once: mutual exclusion is broken
        await second.release()
    await holder.aclose()


def uptime(server: RedisServer) -> float:
    info = server.command("INFO", "server")
    assert isinstance(info, bytes)
    return float(parse_info(info)["uptime_in_seconds"])


async def test_with_quarantine_the_restarted_node_does_not_count(
    cluster: LocalCluster,
) -> None:
    # The suite's nodes are young too: a 2 s quarantine tells the node that
    # restarts now from the others (the default, the largest TTL in use, is
    # covered by the unit tests).
    await asyncio.sleep(max(0.0, 4 - uptime(cluster[2])))
    holder, lock = await hold_on_a_and_b(cluster)
    cluster[1].restart()
    async with AsyncRedlock(
        [unreachable(), cluster.urls[1], cluster.urls[2]],
        ttl=30.0,
        node_timeout=1.0,
        restart_quarantine=2.0,
    ) as contender:
        with pytest.raises(LockNotAcquired, match="restart_quarantine") as info:
            await contender.acquire("r", blocking=False)
        votes = [o.vote for o in info.value.outcomes]
        assert votes == [Vote.ERROR, Vote.QUARANTINED, Vote.YES]
    # The failed attempt took its keys back from B and C.
    assert cluster[1].command("GET", "r") is None
    assert cluster[2].command("GET", "r") is None
    assert lock.held
    await holder.aclose()


async def test_a_node_counts_again_once_the_quarantine_is_over(
    cluster: LocalCluster,
) -> None:
    cluster[0].command("SET", "r", "other", "PX", 60000)
    cluster[1].restart()
    async with AsyncRedlock(
        cluster.urls, ttl=5.0, node_timeout=1.0, restart_quarantine=1.0
    ) as rl:
        with pytest.raises(LockNotAcquired):
            await rl.acquire("r", blocking=False)
        await asyncio.sleep(1.5)
        lock = await rl.acquire("r", blocking=False)
        await lock.release()
    cluster[0].command("DEL", "r")


async def test_a_restart_seen_by_a_running_client_is_logged(
    cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    async with AsyncRedlock(
        cluster.urls, ttl=5.0, node_timeout=1.0, restart_quarantine=0
    ) as rl:
        await (await rl.acquire("r")).release()
        cluster[2].restart()
        with caplog.at_level(logging.WARNING, logger="redlock_aio"):
            lock = await rl.acquire("r")
            await lock.release()
    assert "restarted" in caplog.text


async def test_eviction_policy_other_than_noeviction_warns_once(
    cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    cluster[0].command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    try:
        with caplog.at_level(logging.WARNING, logger="redlock_aio"):
            async with AsyncRedlock(
                cluster.urls, ttl=5.0, node_timeout=1.0, restart_quarantine=0
            ) as rl:
                for _ in range(3):
                    await (await rl.acquire("r")).release()
    finally:
        cluster[0].command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    assert caplog.text.count("allkeys-lru") == 1
