"""Restart quarantine: a node that lost its data (restarted without persistence,
flushed, replaced) must not help grant a lock that is still held elsewhere
(Redlock's "delayed restarts" rule). Each node keeps a marker key; the acquire
script finds it missing on the first request after the loss, whatever the
connection, and the node's yes votes then wait out the quarantine on the
node's own clock."""

from __future__ import annotations

import asyncio
import logging

import pytest

from redlock_aio import AsyncRedlock, Lock, LockNotAcquired, Vote
from redlock_aio.__main__ import main
from redlock_aio._scripts import MARKER
from redlock_aio.testing import FaultProxy, LocalCluster, free_port

from .helpers import mark_intact, settle

pytestmark = pytest.mark.integration


def unreachable() -> str:
    """A node URL nothing listens on: this client is cut off from that node."""
    return f"redis://127.0.0.1:{free_port()}/0"


async def hold_on_a_and_b(cluster: LocalCluster) -> tuple[AsyncRedlock, Lock]:
    """A holder that reaches nodes A and B only, holding the lock on both."""
    holder = AsyncRedlock(
        [cluster.urls[0], cluster.urls[1], unreachable()], ttl=30.0, node_timeout=1.0
    )
    lock = await holder.acquire("r", blocking=False)
    await settle(lock)
    assert cluster[0].command("GET", "r") == lock.token
    assert cluster[1].command("GET", "r") == lock.token
    return holder, lock


def contender(cluster: LocalCluster, **kwargs: object) -> AsyncRedlock:
    """A client that reaches B and C only (B is the node that restarts)."""
    return AsyncRedlock(
        [unreachable(), cluster.urls[1], cluster.urls[2]],
        ttl=30.0,
        node_timeout=1.0,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_without_quarantine_a_restarted_node_grants_a_held_lock_twice(
    cluster: LocalCluster,
) -> None:
    """The hazard itself: this test expects the violation."""
    holder, lock = await hold_on_a_and_b(cluster)
    cluster[1].restart()  # B comes back at once, empty
    async with contender(cluster, restart_quarantine=0) as other:
        second = await other.acquire("r", blocking=False)
        assert lock.held
        assert second.held  # two holders at once: mutual exclusion is broken
        await second.release()
    await holder.aclose()


async def test_with_quarantine_the_restarted_node_does_not_count(
    cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    holder, lock = await hold_on_a_and_b(cluster)
    cluster[1].restart()
    with caplog.at_level(logging.WARNING, logger="redlock_aio"):
        async with contender(cluster) as other:
            with pytest.raises(LockNotAcquired, match="restart_quarantine") as info:
                await other.acquire("r", blocking=False)
            votes = [o.vote for o in info.value.outcomes]
            # Decided once A's error and B's quarantined yes put a quorum out
            # of reach: C's yes may not be in yet.
            assert votes[:2] == [Vote.ERROR, Vote.QUARANTINED]
            assert votes[2] in (Vote.YES, Vote.PENDING)
            # The quarantine runs on B's clock from its first request: 30 s.
            assert "counts in 30.0 s" in str(info.value.outcomes[1])
    # Found once, by the first client that saw the marker missing.
    assert caplog.text.count("has no marker key") == 1
    # The failed attempt took its keys back from B and C.
    assert cluster[1].command("GET", "r") is None
    assert cluster[2].command("GET", "r") is None
    assert lock.held
    await holder.aclose()


async def test_a_user_without_info_still_gets_the_quarantine(
    cluster: LocalCluster,
) -> None:
    """A least-privilege ACL user (no INFO, no CONFIG) once turned the
    quarantine off: the restart was judged from INFO's uptime."""
    holder, lock = await hold_on_a_and_b(cluster)
    cluster[1].restart()
    user = ["~*", "&*", "+@all", "-info", "-config"]
    for server in cluster:
        server.command("ACL", "SETUSER", "locker", "on", ">pw", *user)
    urls = [u.replace("redis://", "redis://locker:pw@") for u in cluster.urls]
    async with AsyncRedlock(
        [unreachable(), urls[1], urls[2]], ttl=30.0, node_timeout=1.0
    ) as other:
        with pytest.raises(LockNotAcquired) as info:
            await other.acquire("r", blocking=False)
        assert [o.vote for o in info.value.outcomes][1] is Vote.QUARANTINED
    assert lock.held
    await holder.aclose()
    for server in cluster:
        server.command("ACL", "DELUSER", "locker")


async def test_a_restart_is_seen_on_a_connection_that_survives_it(
    cluster: LocalCluster,
) -> None:
    """The marker is checked on every acquire, not when a connection opens: a
    client whose connection was made before the node lost its data (behind a
    pooling proxy, the connection to the client is kept) still sees it."""
    holder, lock = await hold_on_a_and_b(cluster)
    async with contender(cluster) as other:
        with pytest.raises(LockNotAcquired):  # connected; held by the holder
            await other.acquire("r", blocking=False)
        cluster[1].command("FLUSHALL")  # B loses its data, the connection stays
        with pytest.raises(LockNotAcquired) as info:
            await other.acquire("r", blocking=False)
        assert [o.vote for o in info.value.outcomes][1] is Vote.QUARANTINED
    assert lock.held
    await holder.aclose()


async def test_a_restart_behind_a_pooling_proxy_is_seen(cluster: LocalCluster) -> None:
    """A proxy that keeps the client's connection and reconnects upstream by
    itself: the client never reconnects, so a check made when a connection
    opens never sees the restart."""
    holder, lock = await hold_on_a_and_b(cluster)
    b = FaultProxy("127.0.0.1", cluster[1].port, reconnect_upstream=True)
    async with (
        b,
        AsyncRedlock(
            [unreachable(), b.url, cluster.urls[2]], ttl=30.0, node_timeout=1.0
        ) as other,
    ):
        with pytest.raises(LockNotAcquired):  # connected; held by the holder
            await other.acquire("r", blocking=False)
        connects = other.nodes[1].connects  # type: ignore[attr-defined]
        cluster[1].restart()  # B comes back at once, empty
        with pytest.raises(LockNotAcquired) as info:
            await other.acquire("r", blocking=False)
        assert [o.vote for o in info.value.outcomes][1] is Vote.QUARANTINED
        # The same client connection all along.
        assert other.nodes[1].connects == connects  # type: ignore[attr-defined]
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


async def test_init_nodes_spares_new_nodes_the_quarantine(
    cluster: LocalCluster,
) -> None:
    cluster.flushall()  # no marker anywhere: a new deployment
    async with AsyncRedlock(cluster.urls, ttl=30.0, key_prefix="app:") as rl:
        with pytest.raises(LockNotAcquired, match="restart_quarantine"):
            await rl.acquire("r", blocking=False)
        outcomes = await rl.init_nodes()
        assert [o.vote for o in outcomes] == [Vote.YES] * 3
        assert [s.command("GET", b"app:" + MARKER) for s in cluster] == [b"0"] * 3
        await (await rl.acquire("r", blocking=False)).release()
    mark_intact(cluster)


async def test_eviction_policy_other_than_noeviction_warns_once(
    cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    cluster[0].command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    try:
        with caplog.at_level(logging.WARNING, logger="redlock_aio"):
            async with AsyncRedlock(cluster.urls, ttl=5.0, node_timeout=1.0) as rl:
                for _ in range(3):
                    await (await rl.acquire("r")).release()
    finally:
        cluster[0].command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    assert caplog.text.count("allkeys-lru") == 1


def test_the_init_command_marks_every_node(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.flushall()
    assert main(["init", "--key-prefix", "app:", *cluster.urls]) == 0
    assert [s.command("GET", b"app:" + MARKER) for s in cluster] == [b"0"] * 3
    assert capsys.readouterr().out.count(": marked") == 3
    # A node that cannot be reached: the others are marked, and it is named.
    assert main(["init", cluster.urls[0], unreachable(), cluster.urls[2]]) == 1
    assert "could not mark 1 of 3 nodes" in capsys.readouterr().err
    mark_intact(cluster)


LOCKER_ACL = [
    "on",
    ">pw",
    "~locks:*",
    "resetchannels",
    "&__redlock__:locks:*",
    "+evalsha",
    "+eval",
    "+script|load",
    "+get",
    "+set",
    "+time",
    "+pexpire",
    "+del",
    "+publish",
    "+subscribe",
    "+unsubscribe",
]


async def test_the_documented_least_privilege_acl_is_enough(
    cluster: LocalCluster,
) -> None:
    """The ACL in the README: acquire (with the quarantine's marker), extend,
    release, release notifications and auto-extension, nothing more."""
    for server in cluster:
        server.command("ACL", "SETUSER", "locker", "reset", *LOCKER_ACL)
    urls = [u.replace("redis://", "redis://locker:pw@") for u in cluster.urls]
    try:
        async with (
            AsyncRedlock(urls, ttl=1.0, key_prefix="locks:") as rl,
            AsyncRedlock(urls, ttl=1.0, key_prefix="locks:") as other,
        ):
            await rl.init_nodes()
            lock = await rl.acquire("r", blocking=False)
            await lock.extend()
            waiting = asyncio.create_task(other.acquire("r", timeout=30))
            await lock.release()
            await (await waiting).release()
            async with rl.lock("r") as held:
                await asyncio.sleep(1.5)  # extended in the background
                assert held.held
    finally:
        for server in cluster:
            server.command("ACL", "DELUSER", "locker")
        mark_intact(cluster)
