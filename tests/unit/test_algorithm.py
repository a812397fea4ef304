"""The algorithm on in-memory fake nodes and an injected clock: validity
arithmetic, quorum decisions, cleanup, extension and loss, with no sockets."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from redlock_aio import (
    AsyncRedlock,
    ConfigurationError,
    ExtendError,
    Lock,
    LockLost,
    LockNotAcquired,
    Vote,
    _scripts,
)

from .fakes import FakeClock, FakeNode, fake_nodes

if TYPE_CHECKING:
    from collections.abc import Callable


def make(nodes: list[FakeNode], clock: FakeClock, **kwargs: object) -> AsyncRedlock:
    opts: dict[str, object] = {"ttl": 10.0, "node_timeout": 5.0, "retry_delay": 0.0}
    opts.update(kwargs)
    return AsyncRedlock(nodes, clock=clock, **opts)  # type: ignore[arg-type]


async def test_validity_is_ttl_minus_elapsed_minus_drift() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock, delay=0.5)  # each reply moves the clock 0.5 s
    async with make(nodes, clock) as rl:
        start = clock()
        lock = await rl.acquire("r")
        assert lock.valid_until == pytest.approx(start + 10.0 - (10.0 * 0.01 + 0.002))
        # The three fake replies each moved the clock: 1.5 s elapsed in flight.
        assert lock.remaining() == pytest.approx(10.0 - 1.5 - 0.102)
        await lock.release()


async def test_lock_with_no_validity_left_is_never_returned_and_is_cleaned_up() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock, delay=6.0)  # quorum after 12 s > ttl 10 s
    async with make(nodes, clock) as rl:
        with pytest.raises(LockNotAcquired, match="validity ran out") as info:
            await rl.acquire("r", blocking=False)
        assert info.value.attempts == 1
    assert all(not n.store for n in nodes)


async def test_quorum_decides_without_waiting_for_a_hung_node() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    gate = nodes[2].gate = asyncio.Event()  # node 2 answers only once opened
    async with make(nodes, clock, node_timeout=30.0) as rl:
        lock = await asyncio.wait_for(rl.acquire("r"), 20.0)
        assert lock.held
        # Decided at quorum: node 2 had not answered (a round that waited for
        # every node would never have returned before the gate opens).
        assert [o.vote for o in lock.outcomes] == [Vote.YES, Vote.YES, Vote.PENDING]
        gate.set()
        # Its SET is still in flight: release waits for it, so that a late
        # SET could not leave a key.
        await lock.release()
        assert lock.released
    assert all(not n.store for n in nodes)


async def test_failed_attempt_releases_where_it_set() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    for n in nodes[:2]:
        n.store[b"r"] = (b"other", clock() + 100)
    async with make(nodes, clock) as rl:
        with pytest.raises(LockNotAcquired) as info:
            await rl.acquire("r", blocking=False)
        votes = [o.vote for o in info.value.outcomes]
        assert votes.count(Vote.NO) == 2
    assert nodes[2].get(b"r") is None
    assert nodes[0].get(b"r") == b"other"
    # Nodes that said no hold nothing of ours: no release was sent to them.
    assert nodes[0].calls == ["set"]


async def test_retries_until_the_budget_runs_out() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    for n in nodes:
        n.store[b"r"] = (b"other", clock() + 100)
    async with make(nodes, clock, retry_count=3) as rl:
        with pytest.raises(LockNotAcquired) as info:
            await rl.acquire("r")
    assert info.value.attempts == 4


async def test_errors_are_votes_against_with_their_cause() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    nodes[0].error = ConnectionError("refused")
    nodes[1].error = ConnectionError("refused")
    async with make(nodes, clock) as rl:
        with pytest.raises(LockNotAcquired) as info:
            await rl.acquire("r", blocking=False)
    errors = [o for o in info.value.outcomes if o.vote is Vote.ERROR]
    assert len(errors) == 2
    assert all(
        isinstance(o.error.__cause__, ConnectionError) for o in errors if o.error
    )
    assert "refused" in str(info.value)
    assert all(not n.store for n in nodes)


async def test_extend_recomputes_validity_from_its_start() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    async with make(nodes, clock) as rl:
        lock = await rl.acquire("r")
        clock.advance(4.0)
        start = clock()
        left = await lock.extend(20.0)
        assert lock.valid_until == pytest.approx(start + 20.0 - (0.2 + 0.002))
        assert left == pytest.approx(lock.valid_until - clock())
        await lock.release()


async def test_expired_lock_is_not_extended_nor_revived() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    async with make(nodes, clock) as rl:
        lock = await rl.acquire("r")
        clock.advance(11.0)
        assert lock.lost
        with pytest.raises(LockLost):
            await lock.extend()
        assert all(n.calls == ["set"] for n in nodes)
        await lock.release()


async def test_extend_answer_after_the_deadline_means_lost() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    async with make(nodes, clock) as rl:
        lock = await rl.acquire("r")
        for n in nodes:
            n.delay = 6.0  # the quorum's OK arrives 12 s later: past validity
        with pytest.raises(LockLost):
            await lock.extend()
        assert lock.lost
        for n in nodes:
            n.delay = 0.0
        await lock.release()


async def test_extend_without_quorum_keeps_the_old_validity() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    async with make(nodes, clock) as rl:
        lock = await rl.acquire("r")
        before = lock.valid_until
        nodes[0].error = nodes[1].error = ConnectionError("down")
        with pytest.raises(ExtendError):
            await lock.extend()
        assert lock.valid_until == before
        assert lock.held
        nodes[0].error = nodes[1].error = None
        await lock.release()


async def test_extend_when_the_keys_are_gone_is_lost() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    async with make(nodes, clock) as rl:
        lock = await rl.acquire("r")
        for n in nodes:
            n.store.clear()
        with pytest.raises(LockLost, match="gone or taken"):
            await lock.extend()


async def test_cancelled_acquire_leaves_no_key() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    gate = asyncio.Event()
    for n in nodes:
        n.gate = gate
    async with make(nodes, clock) as rl:
        task = asyncio.create_task(rl.acquire("r"))
        await asyncio.sleep(0.01)
        task.cancel()
        # The SETs are still queued on the nodes; they land when the gate opens.
        await asyncio.sleep(0.01)
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert all(n.get(b"r") is None for n in nodes)
        assert not rl._tasks


async def test_lost_lock_cancels_the_body_and_raises_lock_lost() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    async with make(nodes, clock, ttl=0.3, node_timeout=0.05) as rl:
        reached_end = False
        with pytest.raises(LockLost):
            async with rl.lock("r") as lock:
                for n in nodes:
                    n.store.clear()  # the keys vanish (e.g. a flush)
                await asyncio.sleep(30)  # cancelled when the keeper notices
                reached_end = True
        assert not reached_end
        assert lock.lost
        assert lock.released


async def test_outer_cancellation_propagates_as_itself() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    async with make(nodes, clock) as rl:

        async def body() -> None:
            async with rl.lock("r"):
                await asyncio.sleep(30)

        task = asyncio.create_task(body())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert all(n.get(b"r") is None for n in nodes)


async def test_opting_out_of_cancellation_reports_through_on_lost() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    seen: list[Lock] = []
    told = asyncio.Event()

    def on_lost(lock: Lock) -> None:
        seen.append(lock)
        told.set()

    async with make(nodes, clock, ttl=0.3, node_timeout=0.05) as rl:
        with pytest.raises(LockLost):
            async with rl.lock("r", cancel_on_lost=False, on_lost=on_lost) as lock:
                for n in nodes:
                    n.store.clear()
                await told.wait()  # not cancelled: the body runs on
                assert lock.lost
                finished = True
        assert finished
        assert seen == [lock]


async def test_body_exception_propagates_unwrapped_and_releases() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    async with make(nodes, clock) as rl:
        with pytest.raises(KeyError):
            async with rl.lock("r"):
                raise KeyError("boom")
    assert all(not n.store for n in nodes)


async def test_aclose_ends_every_task_and_closes_nodes() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    nodes[2].hang = True
    rl = make(nodes, clock, node_timeout=0.1)
    await rl.acquire("r")  # left held: aclose releases it
    await rl.aclose()
    assert not rl._tasks
    assert all(n.closed for n in nodes)
    assert all(not n.store for n in nodes[:2])


async def test_aclose_during_a_block_cancels_it_with_lock_lost() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    rl = make(nodes, clock, ttl=60.0)
    entered = asyncio.Event()

    async def body() -> None:
        async with rl.lock("r"):
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(body())
    await entered.wait()
    await asyncio.wait_for(rl.aclose(), 5)  # does not wait for the keeper's 20 s
    with pytest.raises(LockLost, match="closed"):
        await task
    assert not rl._tasks
    assert all(not n.store for n in nodes)


async def test_manual_release_inside_a_block_is_fine() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    async with make(nodes, clock) as rl:
        async with rl.lock("r") as lock:
            await lock.release()
        assert lock.released
        assert not lock.lost


async def test_restart_quarantine_defaults_to_the_largest_ttl_in_use() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    async with make(nodes, clock, ttl=10.0) as rl:
        await (await rl.acquire("r", ttl=30.0)).release()  # 30 s is now in use
        nodes[1].lose_data()
        nodes[2].lose_data()
        with pytest.raises(LockNotAcquired, match="restart_quarantine") as info:
            await rl.acquire("r", blocking=False)
        votes = [o.vote for o in info.value.outcomes]
        assert votes == [Vote.YES, Vote.QUARANTINED, Vote.QUARANTINED]
        assert "counts in 30.0 s" in str(info.value.outcomes[1])
        clock.advance(29.0)  # the nodes' own clock: 1 s of quarantine left
        with pytest.raises(LockNotAcquired, match=r"counts in 1\.0 s"):
            await rl.acquire("r", blocking=False)
        clock.advance(1.0)
        await (await rl.acquire("r", blocking=False)).release()
    assert all(not n.store for n in nodes)


async def test_a_node_whose_clock_went_back_restarts_its_quarantine() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    async with make(nodes, clock, ttl=10.0, restart_quarantine=5.0) as rl:
        for node in nodes[1:]:
            node.lose_data()
            node.markers = {b"__redlock__:marker": b"%d" % (clock() * 1000 + 10**9)}
        with pytest.raises(LockNotAcquired) as info:
            await rl.acquire("r", blocking=False)
        # Not 10**6 s of quarantine: it counts from the node's present.
        assert "counts in 5.0 s" in str(info.value.outcomes[1])


async def test_restart_quarantine_zero_counts_every_node() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    for node in nodes:
        node.lose_data()
    async with make(nodes, clock, restart_quarantine=0) as rl:
        await (await rl.acquire("r")).release()
    assert [n.calls for n in nodes] == [["set", "release"]] * 3


async def test_init_nodes_spares_a_new_deployment_the_quarantine() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    for node in nodes:
        node.lose_data()
    async with make(nodes, clock, key_prefix="app:") as rl:
        with pytest.raises(LockNotAcquired, match="restart_quarantine"):
            await rl.acquire("r", blocking=False)
        outcomes = await rl.init_nodes()
        assert [o.vote for o in outcomes] == [Vote.YES] * 3
        assert all(n.markers == {b"app:__redlock__:marker": b"0"} for n in nodes)
        await (await rl.acquire("r", blocking=False)).release()


async def test_the_marker_key_is_not_a_resource() -> None:
    clock = FakeClock()
    async with make(fake_nodes(3, clock), clock) as rl:
        with pytest.raises(ConfigurationError, match="marker key"):
            await rl.acquire("__redlock__:marker")


async def test_a_shorter_extend_shortens_the_validity() -> None:
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    async with make(nodes, clock, ttl=10.0) as rl:
        lock = await rl.acquire("r")
        start = clock()
        await lock.extend(2.0)  # the keys now expire in 2 s: so must the lock
        assert lock.valid_until == pytest.approx(start + 2.0 - (0.02 + 0.002))
        assert [o.vote for o in lock.outcomes] == [Vote.YES] * 3
        await lock.release()


class _SilentNotifier(FakeNode):
    """A fake node that takes release subscriptions and never fires them."""

    async def subscribe(self, channel: bytes, callback: object) -> None:
        pass

    def unsubscribe(self, channel: bytes, callback: object) -> None:
        pass


def _most_callbacks_on_one_future() -> int:
    import gc

    return max(
        (
            len(obj._callbacks or ())
            for obj in gc.get_objects()
            if asyncio.isfuture(obj)
        ),
        default=0,
    )


@pytest.mark.parametrize("notified", [False, True], ids=["polling", "notified"])
async def test_acquires_in_backoff_share_no_future_they_must_leave_one_by_one(
    notified: bool,
) -> None:
    """Regression (benchmark scenario 7): every acquire sleeping between attempts
    put a done callback on the client's one shared "closing" future, and each
    wake-up removed its own by scanning that future's list: O(n^2) for n
    acquires in backoff (100,000 blocked the event loop for minutes). Their
    sleeps are now their own; aclose() still wakes them all."""
    clock = FakeClock()
    kind = _SilentNotifier if notified else FakeNode  # notified: the Wakeup path
    nodes: list[FakeNode] = [kind(f"fake{i}", clock) for i in range(3)]
    waiting = 500
    async with make(nodes, clock, retry_delay=3600.0, retry_delay_max=3600.0) as rl:
        held = await rl.acquire("busy")
        tasks = [asyncio.create_task(rl.acquire("busy")) for _ in range(waiting)]
        # Notified: a first attempt, the subscription, a second attempt at once.
        attempts = 2 if notified else 1
        sets = 3 * (1 + attempts * waiting)
        while sum(n.calls.count("set") for n in nodes) < sets:  # noqa: ASYNC110 (a state)
            await asyncio.sleep(0)
        for _ in range(5):
            await asyncio.sleep(0)
        assert _most_callbacks_on_one_future() < waiting // 10
        await held.release()
    # aclose() woke every sleeper: each ended with RedlockClosed, none hangs.
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(type(r).__name__ == "RedlockClosed" for r in results)


class _StampedFuture(asyncio.Future[object]):
    sent_at: float


def _copy_into(
    outer: asyncio.Future[object],
    on_done: Callable[[asyncio.Future[object]], None] | None = None,
) -> Callable[[asyncio.Future[object]], None]:
    """A done callback that settles ``outer`` as its future settled, then
    calls ``on_done(outer)``."""

    def copy(done: asyncio.Future[object]) -> None:
        if done.cancelled():
            outer.cancel()
        elif done.exception() is not None:
            outer.set_exception(done.exception())  # type: ignore[arg-type]
        else:
            outer.set_result(done.result())
        if on_done is not None:
            on_done(outer)

    return copy


class _StampingNode(FakeNode):
    """A fake node whose requests say when they were written (``sent_at``, as
    ``MuxNode``'s do): ``written_after`` seconds after they were made."""

    written_after: float = 0.0

    def submit(self, command: object, **kwargs: Any) -> asyncio.Future[object]:
        on_done = kwargs.pop("on_done", None)  # called with outer (the contract)
        inner = super().submit(command, **kwargs)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        outer = _StampedFuture(loop=loop)
        outer.sent_at = loop.time() + self.written_after
        inner.add_done_callback(_copy_into(outer, on_done))
        return outer


async def test_validity_counts_from_the_earliest_write_of_a_yes_request() -> None:
    """A request that waited in the client before its write (a connection
    opening, a full window) had not reached its node: the lock's validity
    counts from the earliest write among the nodes that said yes, never from
    a no's (its key is not the lock's)."""
    clock = FakeClock()
    nodes = [_StampingNode(f"s{i}", clock) for i in range(3)]
    for node, after in zip(nodes, (2.0, 3.0, 0.5), strict=True):
        node.written_after = after
    nodes[2].store[b"r"] = (b"someone else", clock() + 60.0)  # says no
    async with make(list(nodes), clock) as rl:
        start = clock()
        lock = await rl.acquire("r", blocking=False)
        drift = 10.0 * 0.01 + 0.002
        assert lock.valid_until == pytest.approx(start + 2.0 + 10.0 - drift, abs=0.05)
        await lock.release()


class _CostlyReleaseNode(FakeNode):
    """A node whose release requests each take the client a second of its
    clock to make (the work of a release, in a turn where many blocks end)."""

    def submit(self, command: Any, **kwargs: Any) -> asyncio.Future[object]:
        if command.script in (_scripts.RELEASE, _scripts.RELEASE_QUIET):
            self.clock.advance(1.0)  # type: ignore[attr-defined]  # a FakeClock
        return super().submit(command, **kwargs)


async def test_blocks_ending_together_each_learn_their_outcome_before_any_releases() -> (
    None
):
    """When many lock() blocks end in the same turn of the loop (tasks woken
    together), each one checks its lock before any of them does the work of a
    release: else a block behind the others resumes only after all their
    releases and finds its lock expired (LockLost, benchmark scenario 7)."""
    clock = FakeClock()
    nodes = [_CostlyReleaseNode(f"c{i}", clock) for i in range(3)]
    go = asyncio.Event()
    all_in = asyncio.Event()
    entered = 0
    outcomes: list[str] = []

    async def block(rl: AsyncRedlock, i: int) -> None:
        nonlocal entered
        try:
            async with rl.lock(f"r{i}", auto_extend=False):
                entered += 1
                if entered == 10:
                    all_in.set()
                await go.wait()
        except LockLost:
            outcomes.append("lost")
        else:
            outcomes.append("ok")

    async with make(list(nodes), clock) as rl:
        tasks = [asyncio.create_task(block(rl, i)) for i in range(10)]
        await all_in.wait()
        go.set()  # ten releases: 30 s of the clock, a 10 s TTL
        await asyncio.gather(*tasks)
    assert outcomes == ["ok"] * 10


async def test_a_block_cancelled_as_it_ends_still_releases() -> None:
    """A cancellation that comes while an ending block waits its turn to
    release (see above) is raised once the release is done."""
    clock = FakeClock()
    nodes = fake_nodes(3, clock)
    go = asyncio.Event()
    inside = asyncio.Event()

    async def block(rl: AsyncRedlock) -> None:
        async with rl.lock("r"):
            inside.set()
            await go.wait()

    async with make(list(nodes), clock) as rl:
        task = asyncio.create_task(block(rl))
        await inside.wait()
        go.set()
        await asyncio.sleep(0)  # the block ends, and waits for its next turn
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert all(not node.store for node in nodes)


class _HookPassingNode(FakeNode):
    """A wrapper that breaks the on_done contract: it hands the hook on to the
    inner request, so the hook gets a future its submit() did not return."""

    def submit(self, command: object, **kwargs: Any) -> asyncio.Future[object]:
        inner = super().submit(command, **kwargs)  # type: ignore[arg-type]
        outer: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        inner.add_done_callback(_copy_into(outer))
        return outer


async def test_a_node_that_calls_on_done_with_another_future_still_gets_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Rounds find a request by the future its hook is called with; a node
    that breaks that contract gets a warning, once, and its votes are counted
    from its own futures: the acquire and release still decide."""
    clock = FakeClock()
    nodes: list[FakeNode] = [_HookPassingNode(f"h{i}", clock) for i in range(3)]
    async with make(nodes, clock) as rl:
        for _ in range(2):
            lock = await rl.acquire("r", blocking=False)
            await lock.release()
        assert all(b"r" not in node.store for node in nodes)
    warnings = [r for r in caplog.records if "on_done" in r.getMessage()]
    assert len(warnings) == 1
