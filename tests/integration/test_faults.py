"""Fault-injection scenarios on real redis-server nodes: each test name or
docstring states its pass criterion. Partition scenarios (a client cut off from
some nodes by a proxy) are in test_partitions.py; README.md beside them lists
every scenario with what is injected and what must hold."""

from __future__ import annotations

import asyncio
import functools
import random
import signal
import sys
import textwrap
import time

import anyio
import pytest
import redis.exceptions

from redlock_aio import (
    AsyncRedlock,
    Lock,
    LockLost,
    LockNotAcquired,
    Vote,
)
from redlock_aio.testing import LocalCluster, RedisServer

from .helpers import keys, no_key, settle

pytestmark = [pytest.mark.integration, pytest.mark.faults]

# The suite's nodes are started by the suite: no lock predates them (the restart
# quarantine has its own tests).
Redlock = functools.partial(AsyncRedlock, restart_quarantine=0)


async def test_one_node_killed_while_held_extensions_keep_succeeding(
    cluster: LocalCluster,
) -> None:
    """Kill 1 of 3 while a block holds the lock: no loss over 4 TTLs, and a
    contender cannot acquire meanwhile."""
    async with (
        Redlock(cluster.urls, ttl=1.0, node_timeout=0.25) as holder,
        Redlock(cluster.urls, ttl=1.0, node_timeout=0.25) as contender,
    ):
        async with holder.lock("r") as lock:
            cluster[0].kill()
            deadline_before = lock.valid_until
            for _ in range(8):
                await asyncio.sleep(0.5)
                assert lock.held
                with pytest.raises(LockNotAcquired):
                    await contender.acquire("r", blocking=False)
            assert lock.valid_until > deadline_before + 3.0
        assert not lock.lost


async def test_two_nodes_killed_while_held_the_block_is_cancelled_before_the_deadline(
    cluster: LocalCluster,
) -> None:
    """Kill 2 of 3: the lost signal fires before the local validity deadline,
    the body is cancelled, and the block raises LockLost."""
    signalled: list[tuple[float, float]] = []

    def on_lost(lock: Lock) -> None:
        signalled.append((time.monotonic(), lock.valid_until))

    async with Redlock(cluster.urls, ttl=1.5, node_timeout=0.25) as rl:
        body_finished = False
        with pytest.raises(LockLost):
            async with rl.lock("r", on_lost=on_lost):
                cluster[0].kill()
                cluster[1].kill()
                await asyncio.sleep(60)
                body_finished = True
    assert not body_finished
    [(when, deadline)] = signalled
    assert when < deadline


async def test_a_paused_node_costs_at_most_the_node_timeout_and_a_late_set_never_counts(
    cluster: LocalCluster,
) -> None:
    """A SIGSTOPped node: acquire and extend are decided by the other two;
    release waits for it at most the per-node timeout. The paused node's SET,
    applied after it resumes, never counted."""
    node_timeout = 0.3
    margin = 5.0  # generous: a loaded 2-core machine, not a benchmark
    async with Redlock(cluster.urls, ttl=2.0, node_timeout=node_timeout) as rl:
        cluster[2].pause()
        try:
            t0 = time.monotonic()
            lock = await rl.acquire("r")
            assert [o.vote for o in lock.outcomes][:2] == [Vote.YES, Vote.YES]
            assert lock.outcomes[2].vote is Vote.PENDING
            await lock.extend()
            await lock.release()
            assert time.monotonic() - t0 < 2 * node_timeout + margin
            # A failing attempt: the paused node's vote is a timeout, not a yes.
            cluster[0].command("SET", "r", "other", "PX", 60000)
            with pytest.raises(LockNotAcquired) as info:
                await rl.acquire("r", blocking=False)
            votes = [o.vote for o in info.value.outcomes]
            assert votes[:2] == [Vote.NO, Vote.YES]
            # A timeout, or an error when an earlier request's timeout gave up
            # the connection first: never a yes.
            assert votes[2] in (Vote.TIMEOUT, Vote.ERROR)
        finally:
            cluster[2].resume()
    cluster[0].command("DEL", "r")
    # Whatever the paused node applied late expires by its TTL.
    await asyncio.sleep(2.5)
    assert await no_key(cluster)


async def test_a_node_busy_in_debug_sleep_is_left_pending_by_the_quorum(
    cluster: LocalCluster,
) -> None:
    """DEBUG SLEEP (the server busy, not stopped), as with a paused node: the
    other two decide the acquire, the busy node's vote is still pending when
    it returns, and whatever it applies late expires by its TTL."""
    async with Redlock(cluster.urls, ttl=2.0, node_timeout=0.3) as rl:
        sleeper = asyncio.get_running_loop().run_in_executor(
            None, functools.partial(cluster[1].command, "DEBUG", "SLEEP", "1.5")
        )
        await asyncio.sleep(0.1)
        lock = await rl.acquire("r")
        assert lock.outcomes[1].vote is Vote.PENDING
        await lock.release()
        await sleeper
    await asyncio.sleep(2.5)
    assert await no_key(cluster)


HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from redlock_aio import AsyncRedlock, LockLost

    async def main(urls):
        async with AsyncRedlock(urls, ttl=1.0, node_timeout=0.2,
                                restart_quarantine=0) as rl:
            try:
                async with rl.lock("r") as lock:
                    print("held", lock.token.hex(), flush=True)
                    await asyncio.sleep(30)
            except LockLost as exc:
                print("lost", "extended" if lock.ttl != 1.0 else "", exc, flush=True)

    asyncio.run(main(sys.argv[1:]))
    """
)


async def test_a_paused_holder_learns_it_lost_the_lock_and_spares_the_new_holder(
    cluster: LocalCluster,
) -> None:
    """The holder's process is SIGSTOPped for longer than the TTL; another
    client takes the lock; on SIGCONT the holder learns the lock is lost
    without extending it, and its release leaves the new holder's key alone."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLDER,
        *cluster.urls,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        line = (await child.stdout.readline()).decode()
        assert line.startswith("held"), line
        child.send_signal(signal.SIGSTOP)
        async with Redlock(cluster.urls, ttl=10.0, node_timeout=0.5) as rl:
            lock = await rl.acquire("r", timeout=10.0)  # once the old TTL is over
            await settle(lock)
            child.send_signal(signal.SIGCONT)
            out = (await asyncio.wait_for(child.stdout.read(), 30)).decode()
            assert out.startswith("lost"), out
            assert keys(cluster) == [lock.token] * 3  # not deleted by the old holder
            await lock.release()
        assert await child.wait() == 0
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGCONT)
            child.kill()
            await child.wait()


async def test_a_majority_ok_after_the_deadline_is_lost_not_renewed(
    cluster: LocalCluster,
) -> None:
    """Two nodes answer the extend only after the lock's validity is over: the
    lock is lost (LockLost), not renewed."""
    async with Redlock(cluster.urls, ttl=1.0, node_timeout=5.0) as rl:
        lock = await rl.acquire("r")
        await settle(lock)
        for server in cluster.servers[:2]:
            server.command("CLIENT", "PAUSE", 2000, "ALL")
        with pytest.raises(LockLost):
            await lock.extend()
        assert lock.lost
        await asyncio.sleep(2.2)  # the pause is over; keys expire by TTL
        with pytest.raises(LockLost):
            await lock.extend()  # never revived
        await lock.release()
    assert await no_key(cluster)


async def test_cancellation_at_random_points_leaves_no_key_and_no_task(
    cluster: LocalCluster,
) -> None:
    """Cancel acquire/extend/release at random points, 150 times: the
    cancellation propagates, no key stays, no task is left behind."""
    rng = random.Random(9)
    async with Redlock(cluster.urls, ttl=5.0, node_timeout=1.0) as rl:

        async def cycle() -> None:
            lock = await rl.acquire("r", timeout=5.0)
            try:
                await lock.extend()
            finally:
                await lock.release()

        for _ in range(150):
            task = asyncio.create_task(cycle())
            await asyncio.sleep(rng.uniform(0, 0.003))
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            else:
                assert task.done()
            # A release to a node slower than the quorum goes on in the
            # background, bounded by the per-node timeout: let it end.
            if rl._tasks:
                await asyncio.wait(list(rl._tasks))
            assert await no_key(cluster)
    assert not rl._tasks


async def test_noscript_after_a_restart_recovers(cluster: LocalCluster) -> None:
    """A node restarts with its data but without its script cache: extend and
    release reload the scripts transparently."""
    async with Redlock(cluster.urls, ttl=10.0, node_timeout=1.0) as rl:
        lock = await rl.acquire("r")
        await lock.extend()  # scripts loaded on every node
        await settle(lock)
        cluster[0].restart(keep_data=True)
        assert cluster[0].command("GET", "r") == lock.token
        # The first request may meet the pooled connection the restart closed
        # (an error vote; the quorum holds). The next one reconnects, meets
        # NOSCRIPT, loads the script and succeeds.
        await lock.extend()
        await settle(lock)
        await lock.extend()
        await settle(lock)
        assert lock.outcomes[0].vote is Vote.YES
        await lock.release()
    assert await no_key(cluster)


@pytest.mark.parametrize(
    "fault", ["oom", "readonly", "wrongtype", "noauth", "refused", "tls"]
)
async def test_error_replies_are_votes_against_with_their_reason(
    fault: str, cluster: LocalCluster, redis_binary: str
) -> None:
    """A node that answers with an error (or cannot be reached) is a vote
    against that keeps its reason; with a healthy majority the lock works."""
    bad_url = cluster.urls[0]
    extra: RedisServer | None = None
    expected: type[Exception] = redis.exceptions.ResponseError
    if fault == "oom":
        cluster[0].command("CONFIG", "SET", "maxmemory", "1")
        reason = "maxmemory"
        expected = redis.exceptions.OutOfMemoryError
    elif fault == "readonly":
        cluster[0].command("REPLICAOF", "127.0.0.1", cluster[1].port)
        reason = "read only replica"
        expected = redis.exceptions.ReadOnlyError
    elif fault == "wrongtype":
        cluster[0].command("RPUSH", "r", "x")
        reason = "WRONGTYPE"
    elif fault == "noauth":
        extra = RedisServer(binary=redis_binary, password="s3cret").start()
        bad_url = extra.url.replace(":s3cret@", ":wrong@")
        reason = "invalid username-password"
        expected = redis.exceptions.AuthenticationError
    elif fault == "refused":
        extra = RedisServer(binary=redis_binary).start()
        bad_url = extra.url
        extra.kill()
        reason = "Connect call failed|Connection refused"  # asyncio | uvloop
        expected = redis.exceptions.ConnectionError
    else:
        bad_url = cluster.urls[0].replace("redis://", "rediss://")
        reason = "SSL"
        expected = redis.exceptions.ConnectionError
    urls = [bad_url, cluster.urls[1], cluster.urls[2]]
    try:
        async with Redlock(urls, ttl=5.0, node_timeout=0.5) as rl:
            lock = await rl.acquire("r")
            await settle(lock)
            if fault == "wrongtype":
                # SET NX on a key of another type is a plain no; the error
                # comes from the scripts' GET.
                assert lock.outcomes[0].vote is Vote.NO
                await lock.extend()
                await settle(lock)
            outcome = lock.outcomes[0]
            if fault == "tls":
                # The plain server waits for the end of a command line that a
                # TLS hello never sends: a timeout, or an error once it gives up.
                assert outcome.vote in (Vote.TIMEOUT, Vote.ERROR), outcome
            else:
                assert outcome.vote is Vote.ERROR, outcome
                assert outcome.error is not None
                assert isinstance(outcome.error.__cause__, expected), outcome
                assert any(r in str(outcome) for r in reason.split("|")), outcome
            assert "s3cret" not in str(outcome)
            assert "wrong" not in outcome.node
            await lock.release()
            assert lock.released
    finally:
        if fault == "oom":
            cluster[0].command("CONFIG", "SET", "maxmemory", "0")
        elif fault == "readonly":
            cluster[0].command("REPLICAOF", "NO", "ONE")
            cluster[0].command("FLUSHALL")
        elif fault == "wrongtype":
            cluster[0].command("DEL", "r")
        if extra is not None:
            extra.stop()


async def test_five_contenders_a_winner_and_no_partial_key_left(
    cluster: LocalCluster,
) -> None:
    """5 clients try at once, round after round: at most one wins a round, a
    winner comes within bounded rounds, and once every attempt has returned,
    the nodes hold the winner's key only (the losers cleaned up)."""
    redlocks = [Redlock(cluster.urls, ttl=5.0, node_timeout=1.0) for _ in range(5)]
    try:
        winner: Lock | None = None
        for _round in range(50):
            results = await asyncio.gather(
                *(rl.acquire("r", blocking=False) for rl in redlocks),
                return_exceptions=True,
            )
            won = [r for r in results if isinstance(r, Lock)]
            assert all(isinstance(r, (Lock, LockNotAcquired)) for r in results)
            assert len(won) <= 1
            if won:
                winner = won[0]
                await settle(winner)
                # The winner holds a quorum; no loser's partial key remains
                # (a node may hold nothing: the winner's SET there met a
                # loser's key, since taken back).
                values = keys(cluster)
                assert values.count(winner.token) >= 2
                assert all(v in (winner.token, None) for v in values)
                break
            assert await no_key(cluster)
        assert winner is not None
        await winner.release()
    finally:
        for rl in redlocks:
            await rl.aclose()


async def test_a_wall_clock_jump_changes_nothing(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """time.time() moved an hour ahead, then back: acquire, extend, auto-extend
    and release behave the same (all timing is monotonic)."""
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
    async with Redlock(cluster.urls, ttl=1.0, node_timeout=0.25) as rl:
        lock = await rl.acquire("r")
        assert 0.5 < lock.remaining() <= 1.0
        await lock.extend()
        monkeypatch.setattr(time, "time", lambda: real_time() - 3600)
        await lock.release()
        async with rl.lock("r") as held:
            await asyncio.sleep(2.0)  # two TTLs, kept by auto-extension
            assert held.held
    assert await no_key(cluster)


async def test_cancelled_acquire_against_a_paused_majority_leaves_no_key(
    cluster: LocalCluster,
) -> None:
    """The acquire is cancelled while two nodes are stopped: the cleanup waits
    (bounded by the per-node timeout) and nothing of ours remains once the
    nodes answer again and the TTL is over."""
    async with Redlock(cluster.urls, ttl=1.0, node_timeout=0.3) as rl:
        cluster[0].pause()
        cluster[1].pause()
        try:
            with anyio.move_on_after(0.05):
                await rl.acquire("r")
        finally:
            cluster[0].resume()
            cluster[1].resume()
    await asyncio.sleep(1.5)
    assert await no_key(cluster)
