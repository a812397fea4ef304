"""Bad input that only shows at run time: unreachable nodes, wrong passwords,
TLS against a plain server, huge or non-UTF-8 resources, extreme TTLs. Each
gets a clear answer, never a hang; no password ever shows."""

from __future__ import annotations

import functools
import logging

import pytest
import redis.exceptions

from redlock_aio import AsyncRedlock, ConfigurationError, LockNotAcquired, Vote
from redlock_aio.testing import LocalCluster, RedisServer, free_port

pytestmark = pytest.mark.integration

Redlock = functools.partial(AsyncRedlock, restart_quarantine=0)


async def test_unreachable_nodes_fail_fast_with_the_reason() -> None:
    urls = [f"redis://127.0.0.1:{free_port()}" for _ in range(3)]
    async with Redlock(urls, ttl=5.0) as rl:
        with pytest.raises(LockNotAcquired) as info:
            await rl.acquire("r", timeout=0.5)
    assert info.value.attempts >= 1
    for outcome in info.value.outcomes:
        assert outcome.vote is Vote.ERROR
        assert isinstance(outcome.error.__cause__, redis.exceptions.ConnectionError)  # type: ignore[union-attr]
    # The wording is the loop's: asyncio's, or uvloop's.
    assert any(
        why in str(info.value) for why in ("Connect call failed", "Connection refused")
    )


async def test_wrong_password_is_a_clear_error_without_the_password(
    redis_binary: str, caplog: pytest.LogCaptureFixture
) -> None:
    servers = [
        RedisServer(binary=redis_binary, password="s3cret").start() for _ in range(3)
    ]
    try:
        urls = [s.url.replace(":s3cret@", ":hunter2@") for s in servers]
        with caplog.at_level(logging.DEBUG):
            rl = Redlock(urls, ttl=5.0)
            with pytest.raises(LockNotAcquired) as info:
                await rl.acquire("r", blocking=False)
            text = " ".join([str(info.value), repr(rl), repr(rl.nodes), caplog.text])
            await rl.aclose()
        assert "invalid username-password" in str(info.value)
        assert "hunter2" not in text
        assert "s3cret" not in text
        # And with no password at all: NOAUTH, also a plain vote against.
        no_password = [s.url.replace(":s3cret@", "") for s in servers]
        async with Redlock(no_password, ttl=5.0) as rl:
            with pytest.raises(LockNotAcquired, match="uthentication"):
                await rl.acquire("r", blocking=False)
        # The right password works.
        async with Redlock([s.url for s in servers], ttl=5.0) as rl:
            await (await rl.acquire("r")).release()
    finally:
        for s in servers:
            s.stop()


async def test_tls_against_a_plain_server_fails_within_the_node_timeout(
    cluster: LocalCluster,
) -> None:
    urls = [u.replace("redis://", "rediss://") for u in cluster.urls]
    async with Redlock(urls, ttl=5.0, node_timeout=0.3) as rl:
        with pytest.raises(LockNotAcquired) as info:
            await rl.acquire("r", blocking=False)
    # Decided once a quorum was out of reach: the third node may still be pending.
    votes = [o.vote for o in info.value.outcomes]
    assert all(v in (Vote.TIMEOUT, Vote.ERROR, Vote.PENDING) for v in votes)
    assert sum(v in (Vote.TIMEOUT, Vote.ERROR) for v in votes) >= 2


async def test_huge_resource_works_and_messages_stay_short(
    cluster: LocalCluster,
) -> None:
    resource = "x" * (1 << 20)  # a 1 MB key
    async with Redlock(cluster.urls, ttl=5.0, node_timeout=2.0) as rl:
        lock = await rl.acquire(resource)
        with pytest.raises(LockNotAcquired) as info:
            await rl.acquire(resource, blocking=False)
        assert len(str(info.value)) < 2000
        assert len(repr(lock)) < 200
        await lock.release()


async def test_non_utf8_bytes_resource(cluster: LocalCluster) -> None:
    async with (
        Redlock(cluster.urls, ttl=5.0, key_prefix=b"app:") as rl,
        rl.lock(b"\xff\xfe\x00orders") as lock,
    ):
        assert lock.key == b"app:\xff\xfe\x00orders"


async def test_a_ttl_of_days(cluster: LocalCluster) -> None:
    days = 3 * 24 * 3600.0
    async with Redlock(cluster.urls, ttl=days) as rl, rl.lock("r") as lock:
        assert lock.remaining() > days - days * 0.011
        await lock._settled()
        pttl = cluster[0].command("PTTL", "r")
        assert isinstance(pttl, int)
        assert 0 < pttl <= days * 1000


async def test_a_ttl_under_a_millisecond_is_refused_before_any_io() -> None:
    async with AsyncRedlock([f"redis://127.0.0.1:{free_port()}"] * 1) as rl:
        with pytest.raises(ConfigurationError, match="leaves no validity"):
            await rl.acquire("r", ttl=0.0005)
