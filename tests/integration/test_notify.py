"""Release notifications: a waiter wakes when the lock is released, not when
its polling timer fires; without notifications it still gets the lock by
polling; a user that may not publish still releases; no subscription or task
is left behind."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import TYPE_CHECKING, Any

import pytest

from redlock_aio import AsyncRedlock, RedisNode

from .helpers import no_key

if TYPE_CHECKING:
    from redlock_aio.testing import LocalCluster

pytestmark = pytest.mark.integration

Redlock = functools.partial(AsyncRedlock, restart_quarantine=0)


async def no_channels_left(cluster: LocalCluster) -> bool:
    """UNSUBSCRIBE is not waited for: give it a moment."""
    for _ in range(100):
        if all(s.command("PUBSUB", "CHANNELS") == [] for s in cluster):
            return True
        await asyncio.sleep(0.02)
    return False


async def test_a_waiter_wakes_on_release_not_on_its_polling_timer(
    cluster: LocalCluster,
) -> None:
    async with (
        Redlock(cluster.urls, ttl=10.0) as holder,
        # Polling alone would retry only every 5 s.
        Redlock(
            cluster.urls, ttl=10.0, retry_delay=5.0, retry_delay_max=5.0, retry_jitter=0
        ) as waiter,
    ):
        held = await holder.acquire("r")
        waiting = asyncio.create_task(waiter.acquire("r", timeout=30.0))
        await asyncio.sleep(0.3)  # it failed once, subscribed, failed again
        assert not waiting.done()
        released_at = time.monotonic()
        await held.release()
        lock = await waiting
        assert time.monotonic() - released_at < 4.0  # far sooner than 5 s
        await lock.release()
    assert await no_channels_left(cluster)


async def test_without_notifications_a_waiter_still_gets_the_lock_by_polling(
    cluster: LocalCluster,
) -> None:
    nodes = [RedisNode.from_url(u) for u in cluster.urls]  # no pub/sub on these
    async with (
        Redlock(cluster.urls, ttl=10.0) as holder,
        Redlock(nodes, ttl=10.0, retry_delay=0.05) as waiter,
    ):
        held = await holder.acquire("r")
        waiting = asyncio.create_task(waiter.acquire("r", timeout=30.0))
        await asyncio.sleep(0.2)
        await held.release()
        await (await waiting).release()


async def test_many_waiters_each_get_the_lock_in_turn(cluster: LocalCluster) -> None:
    order: list[int] = []
    async with Redlock(cluster.urls, ttl=10.0) as rl:
        held = await rl.acquire("r")

        async def waiter(i: int) -> None:
            lock = await rl.acquire("r", timeout=30.0)
            order.append(i)
            await asyncio.sleep(0.01)
            await lock.release()

        tasks = [asyncio.create_task(waiter(i)) for i in range(8)]
        await asyncio.sleep(0.3)
        await held.release()
        await asyncio.gather(*tasks)
    assert sorted(order) == list(range(8))
    assert await no_channels_left(cluster)


async def test_a_cancelled_waiter_leaves_no_subscription(
    cluster: LocalCluster,
) -> None:
    async with Redlock(cluster.urls, ttl=10.0) as rl:
        held = await rl.acquire("r")
        waiting = asyncio.create_task(rl.acquire("r"))
        await asyncio.sleep(0.3)
        assert any(s.command("PUBSUB", "CHANNELS") for s in cluster)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await no_channels_left(cluster)
        await held.release()


async def test_a_user_denied_the_channel_still_releases(cluster: LocalCluster) -> None:
    for server in cluster:
        server.command(
            "ACL", "SETUSER", "locker", "on", ">pw", "~*", "+@all", "resetchannels"
        )
    try:
        urls = [u.replace("redis://", "redis://locker:pw@") for u in cluster.urls]
        async with Redlock(urls, ttl=10.0) as rl:
            lock = await rl.acquire("r")
            await lock.release()
            assert lock.released
            assert await no_key(cluster)
    finally:
        for server in cluster:
            server.command("ACL", "DELUSER", "locker")


def pubsub_clients(cluster: LocalCluster) -> list[int]:
    """Per node, the client connections in pub/sub mode."""
    counts = []
    for server in cluster:
        listing = server.command("CLIENT", "LIST")
        text = listing.decode() if isinstance(listing, bytes) else str(listing)
        counts.append(
            sum(
                1
                for line in text.splitlines()
                if " sub=" in line and " sub=0 " not in line
            )
        )
    return counts


def numsub(cluster: LocalCluster, channel: bytes) -> list[object]:
    """Per node, how many subscribers ``channel`` has."""
    counts = []
    for server in cluster:
        reply = server.command("PUBSUB", "NUMSUB", channel)
        assert isinstance(reply, list)
        counts.append(reply[1])
    return counts


async def test_clients_of_one_process_share_a_pubsub_connection_per_node(
    cluster: LocalCluster,
) -> None:
    """Two waiting clients of the same nodes read each release once per node,
    over one shared connection; it stays while a client still uses it, and
    closes with the last."""
    slow: dict[str, Any] = {
        "retry_delay": 5.0,
        "retry_delay_max": 5.0,
        "retry_jitter": 0,
    }
    holder = Redlock(cluster.urls, ttl=10.0)
    first = Redlock(cluster.urls, ttl=10.0, **slow)
    second = Redlock(cluster.urls, ttl=10.0, **slow)
    try:
        held = await holder.acquire("r")
        waiting = [
            asyncio.create_task(rl.acquire("r", timeout=30.0)) for rl in (first, second)
        ]
        # Both failed, subscribed, failed again (bounded wait: a loaded machine).
        deadline = time.monotonic() + 20
        while numsub(cluster, b"__redlock__:r") != [1, 1, 1]:
            assert time.monotonic() < deadline, numsub(cluster, b"__redlock__:r")
            await asyncio.sleep(0.01)
        assert pubsub_clients(cluster) == [1, 1, 1]
        # One waiter leaves and its client closes: the other still hears.
        waiting[0].cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting[0]
        await first.aclose()
        released_at = time.monotonic()
        await held.release()
        lock = await waiting[1]
        assert time.monotonic() - released_at < 4.0  # woken, not polled (5 s)
        await lock.release()
    finally:
        for rl in (holder, first, second):
            await rl.aclose()
    assert await no_channels_left(cluster)
    for _ in range(100):  # the server notices a closed connection soon after
        if pubsub_clients(cluster) == [0, 0, 0]:
            break
        await asyncio.sleep(0.02)
    assert pubsub_clients(cluster) == [0, 0, 0]
