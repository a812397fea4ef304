"""Failures you can see: what the ``redlock_aio`` logger says, once per change
of a node's state, and for every lock lost."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.asyncio import BlockingConnectionPool, Redis

from redlock_aio import AsyncRedlock, LockLost, LockNotAcquired
from redlock_aio.testing import HungNode, LocalCluster

pytestmark = pytest.mark.integration


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "redlock_aio" and r.levelno == level
    ]


def test_the_package_logger_has_a_null_handler() -> None:
    handlers = logging.getLogger("redlock_aio").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


async def test_a_node_that_fails_and_recovers_is_logged_once_each(
    cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"127.0.0.1:{cluster[2].port}"
    with caplog.at_level(logging.INFO, logger="redlock_aio"):
        async with AsyncRedlock(cluster.urls, ttl=5.0, node_timeout=1.0) as rl:
            await (await rl.acquire("r")).release()
            cluster[2].kill()
            for _ in range(5):
                await (await rl.acquire("r")).release()
            cluster.heal()
            for _ in range(5):
                await (await rl.acquire("r")).release()
    # (Filtered by node: a healthy node slow on a loaded machine may log too.)
    warnings = messages(caplog, logging.WARNING)
    failing = [m for m in warnings if m.startswith(f"node {name} is failing")]
    assert len(failing) == 1
    assert "ConnectionError" in failing[0]
    infos = messages(caplog, logging.INFO)
    assert infos.count(f"node {name} answers again") == 1


async def test_a_hung_node_and_a_quorum_out_of_reach_are_warnings(
    cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    with HungNode() as hung_a, HungNode() as hung_b:
        urls = [cluster.urls[0], hung_a.url, hung_b.url]
        with caplog.at_level(logging.WARNING, logger="redlock_aio"):
            async with AsyncRedlock(urls, ttl=5.0, node_timeout=1.0) as rl:
                for _ in range(3):
                    with pytest.raises(LockNotAcquired):
                        await rl.acquire("r", blocking=False)
    warnings = messages(caplog, logging.WARNING)
    for hung in (hung_a, hung_b):
        failing = [m for m in warnings if f":{hung.port} is failing" in m]
        assert len(failing) == 1
        assert "timeout" in failing[0]
    assert [m for m in warnings if "no quorum within reach" in m] == [
        (
            "no quorum within reach: 2 of 3 nodes failing (2 needed); no lock can "
            "be acquired or extended until enough answer again"
        )
    ]


async def test_a_lost_lock_is_a_warning_with_its_reason_and_nodes(
    cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="redlock_aio"):
        async with AsyncRedlock(cluster.urls, ttl=1.0, node_timeout=0.2) as rl:
            with pytest.raises(LockLost):
                async with rl.lock("r"):
                    for server in cluster:
                        server.command("DEL", "r")  # taken from under it
                    await asyncio.sleep(10)
    [lost] = [m for m in messages(caplog, logging.WARNING) if m.startswith("lock ")]
    # Decided at quorum: the third node may still be pending.
    assert lost.startswith("lock 'r' lost: the key is gone or taken on ")
    assert sum(f"127.0.0.1:{s.port}: no" in lost for s in cluster) >= 2


async def test_each_failed_attempt_is_a_debug_record(
    cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    for server in cluster:
        server.command("SET", "r", "someone else", "PX", 60_000)
    with caplog.at_level(logging.DEBUG, logger="redlock_aio"):
        async with AsyncRedlock(
            cluster.urls, ttl=5.0, retry_count=2, retry_delay=0.01
        ) as rl:
            with pytest.raises(LockNotAcquired):
                await rl.acquire("r")
    attempts = [m for m in messages(caplog, logging.DEBUG) if "attempt" in m]
    assert [m.split(" [")[0] for m in attempts] == [
        f"acquire 'r': attempt {n} failed" for n in (1, 2, 3)
    ]
    for server in cluster:
        server.command("DEL", "r")


async def test_redis_py_clients_on_a_blocking_pool_survive_a_burst(
    cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The README's advice: 200 acquires and releases at once through pools of
    8 connections, none failing; a default pool is a warning."""
    clients = [
        Redis(
            connection_pool=BlockingConnectionPool.from_url(
                url, max_connections=8, timeout=None
            )
        )
        for url in cluster.urls
    ]
    try:
        async with AsyncRedlock(clients, ttl=10.0, node_timeout=5.0) as rl:

            async def cycle(k: int) -> None:
                await (await rl.acquire(f"r{k}", blocking=False)).release()

            await asyncio.gather(*(cycle(k) for k in range(200)))
        plain = Redis.from_url(cluster.urls[0])
        with caplog.at_level(logging.WARNING, logger="redlock_aio"):
            AsyncRedlock([plain, *clients[1:]])
        assert "BlockingConnectionPool" in caplog.text
        await plain.aclose()
    finally:
        for client in clients:
            await client.aclose(close_connection_pool=True)
