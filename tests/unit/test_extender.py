"""The batched auto-extension (``_keeper.Keeper``) on in-memory fake nodes:
one ``extend_many`` per node per chunk of due locks, the per-lock rules of
``Lock.extend`` (gone keys, minority and majority failures), unregistering,
aclose, and the timer that watches a block without auto-extension.

Locks fall due on the event loop's real clock, after a third of their TTL: the
TTLs here are short. Where validity must run out, a node's ``delay`` moves the
fake clock by a fixed step per request, so the outcome does not depend on how
fast this machine is.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from redlock_aio import AsyncRedlock, Lock, LockLost, Vote
from redlock_aio._keeper import CHUNK, IN_FLIGHT, Registration

from .fakes import FakeClock, FakeNode

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Generous bound on each wait for something that takes well under a second.
PATIENCE = 30.0


class RealClock(FakeClock):
    """The monotonic clock, for tests where validity must pass in real time."""

    def __call__(self) -> float:
        return time.monotonic()

    def advance(self, seconds: float) -> None:
        pass


@dataclass
class RecordingNode(FakeNode):
    """A fake node that records the keys of each ``extend_many`` request."""

    batches: list[list[bytes]] = field(default_factory=list)

    async def extend_many(self, items: list[tuple[bytes, bytes, int]]) -> list[bool]:
        self.batches.append([key for key, _, _ in items])
        return await super().extend_many(items)


@dataclass
class HoldingNode(RecordingNode):
    """Holds every ``extend_many`` until :attr:`extends_go` is set; counts
    how many it holds at once."""

    extends_go: asyncio.Event = field(default_factory=asyncio.Event)
    extends_held: int = 0
    most_extends_held: int = 0

    async def extend_many(self, items: list[tuple[bytes, bytes, int]]) -> list[bool]:
        self.extends_held += 1
        self.most_extends_held = max(self.most_extends_held, self.extends_held)
        try:
            await self.extends_go.wait()
            return await super().extend_many(items)
        finally:
            self.extends_held -= 1


def nodes_on(clock: FakeClock, n: int = 3) -> list[RecordingNode]:
    return [RecordingNode(f"fake{i}", clock) for i in range(n)]


def make(nodes: Sequence[FakeNode], clock: FakeClock, **kwargs: object) -> AsyncRedlock:
    opts: dict[str, object] = {"ttl": 0.3, "node_timeout": 0.2, "retry_delay": 0.0}
    opts.update(kwargs)
    return AsyncRedlock(nodes, clock=clock, **opts)  # type: ignore[arg-type]


async def until(condition: object) -> None:
    """Poll ``condition()`` until true (bounded by PATIENCE, not a threshold)."""
    assert callable(condition)

    async def poll() -> None:
        while not condition():  # noqa: ASYNC110 (a condition, not an event)
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), PATIENCE)


class Holders:
    """``count`` blocks ``async with rl.lock(f"r{i}")``, each in its own task,
    holding until :meth:`stop`."""

    def __init__(self, rl: AsyncRedlock, count: int, **kwargs: object) -> None:
        self.locks: dict[int, Lock] = {}
        self.stopped = asyncio.Event()
        self.tasks = [
            asyncio.create_task(self._hold(rl, i, kwargs)) for i in range(count)
        ]

    async def _hold(self, rl: AsyncRedlock, i: int, kwargs: dict[str, object]) -> None:
        async with rl.lock(f"r{i}", **kwargs) as lock:  # type: ignore[arg-type]
            self.locks[i] = lock
            await self.stopped.wait()

    async def entered(self) -> None:
        await until(lambda: len(self.locks) == len(self.tasks))

    async def results(self) -> list[BaseException | None]:
        """Wait for every block to end: what each raised, None if nothing."""
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        return [r if isinstance(r, BaseException) else None for r in results]

    async def stop(self) -> list[BaseException | None]:
        self.stopped.set()
        return await self.results()


async def registered_together(
    rl: AsyncRedlock, clock: FakeClock, count: int
) -> tuple[list[Lock], list[Registration]]:
    """``count`` locks acquired on a frozen ``clock`` (one deadline for all)
    and registered with the keeper together, then the clock moved on so that
    they fall due in the same tick."""
    locks = [await rl.acquire(f"r{i}", blocking=False) for i in range(count)]
    keeper = rl._keeper_of()
    entries = [keeper.add(lock) for lock in locks]
    clock.advance(0.25)
    return locks, entries


async def test_due_locks_are_extended_with_one_request_per_node_per_chunk() -> None:
    clock = FakeClock()  # frozen: every lock has the same deadline
    nodes = nodes_on(clock)
    count = 2 * CHUNK + CHUNK // 2
    async with make(nodes, clock, ttl=1.5) as rl:
        locks, entries = await registered_together(rl, clock, count)
        before = locks[0].valid_until  # not extended yet: no await since
        extender = rl._keeper_of()
        await until(lambda: all(len(n.batches) >= 3 for n in nodes))
        await until(lambda: all(lock.valid_until > before for lock in locks))
        for node in nodes:
            # Chunks of at most CHUNK: the locks fall due within one window,
            # unless registering them took longer than that (a loaded machine):
            # then one tick more takes the late ones.
            sizes = [len(b) for b in node.batches]
            assert max(sizes) == CHUNK
            assert len(sizes) in (3, 4)
            assert "extend" not in node.calls
            assert sorted(k for b in node.batches for k in b) == sorted(
                lock.key for lock in locks
            )
        # Validity counted from the batch's start, as for Lock.extend.
        assert all(lock.valid_until == pytest.approx(before + 0.25) for lock in locks)
        assert all(o.vote is Vote.YES for lock in locks for o in lock.outcomes)
        assert extender.batches == len(nodes[0].batches)  # one request per node each
        for entry in entries:
            extender.remove(entry)
        assert extender.registered == 0
        for lock in locks:
            await lock.release()


async def test_blocks_entered_together_share_requests() -> None:
    clock = FakeClock()
    nodes = nodes_on(clock)
    count = 200
    async with make(nodes, clock, ttl=3.0) as rl:
        holders = Holders(rl, count)
        await holders.entered()
        keys = {lock.key for lock in holders.locks.values()}
        await until(lambda: keys <= {k for b in nodes[2].batches for k in b})
        assert await holders.stop() == [None] * count
        # The same requests went to every node, each lock once per batch, and
        # (locks due within the same 50 ms share a request) fewer than one per lock.
        assert nodes[0].batches == nodes[1].batches == nodes[2].batches
        assert all(len(set(b)) == len(b) for b in nodes[0].batches)
        assert len(nodes[0].batches) < count
        assert all("extend" not in n.calls for n in nodes)
        assert all(not n.store for n in nodes)


async def test_a_lock_whose_keys_vanish_is_lost_and_its_block_cancelled() -> None:
    clock = FakeClock()
    nodes = nodes_on(clock)
    async with make(nodes, clock, node_timeout=0.05) as rl:
        holders = Holders(rl, 5)
        await holders.entered()
        for node in nodes:
            del node.store[b"r2"]  # e.g. a flush, or the key expired
        with pytest.raises(LockLost, match="gone or taken"):
            await holders.tasks[2]
        assert holders.locks[2].lost
        assert holders.locks[2].released
        assert all(holders.locks[i].held for i in (0, 1, 3, 4))
        results = await holders.stop()
        assert results[:2] == results[3:] == [None, None]
        assert all(not n.store for n in nodes)


async def test_errors_on_a_minority_keep_every_lock() -> None:
    clock = FakeClock()
    nodes = nodes_on(clock)
    async with make(nodes, clock) as rl:
        holders = Holders(rl, 10)
        await holders.entered()
        first = {i: lock.valid_until for i, lock in holders.locks.items()}
        nodes[0].error = ConnectionError("down")
        # Each request to node 1 moves the clock 30 ms: 20 requests are 2 TTLs.
        nodes[1].delay = 0.03
        calls = len(nodes[1].batches)
        await until(lambda: len(nodes[1].batches) >= calls + 20)
        for i, lock in holders.locks.items():
            assert lock.held
            assert lock.valid_until > first[i] + 0.3
        # Between batches (a batch just sent shows its nodes pending).
        settled = holders.locks[0]
        await until(lambda: Vote.PENDING not in {o.vote for o in settled.outcomes})
        votes = [o.vote for o in settled.outcomes]
        assert votes[0] is Vote.ERROR
        assert votes[1] is Vote.YES
        nodes[1].delay = 0.0
        assert await holders.stop() == [None] * 10  # released on a quorum
        assert all(not n.store for n in nodes[1:])


async def test_errors_on_a_majority_lose_every_lock_before_its_deadline() -> None:
    clock = FakeClock()
    nodes = nodes_on(clock)
    signalled: list[tuple[float, float]] = []

    def on_lost(lock: Lock) -> None:
        signalled.append((clock(), lock.valid_until))

    async with make(nodes, clock, ttl=1.0, node_timeout=0.05) as rl:
        holders = Holders(rl, 10, on_lost=on_lost)
        await holders.entered()
        nodes[0].error = nodes[1].error = ConnectionError("down")
        # Each attempt moves the clock 40 ms: validity runs out in ~25 attempts.
        nodes[2].delay = 0.04
        results = await holders.results()
        for result in results:
            assert isinstance(result, LockLost)
            assert "no quorum extended it" in str(result)
        assert len(signalled) == 10
        assert all(when < deadline for when, deadline in signalled)
        nodes[0].error = nodes[1].error = None
        nodes[2].delay = 0.0


async def test_a_removed_lock_is_no_longer_extended() -> None:
    clock = FakeClock()
    nodes = nodes_on(clock)
    async with make(nodes, clock) as rl:
        stay = Holders(rl, 1)
        await stay.entered()
        async with rl.lock("gone") as lock:
            await until(lambda: any(b"gone" in b for b in nodes[0].batches))
        assert lock.released
        after = len(nodes[0].batches)
        await until(lambda: len(nodes[0].batches) >= after + 3)
        assert all(b"gone" not in b for b in nodes[0].batches[after:])
        assert all(b"r0" in b for b in nodes[0].batches[after:])
        assert rl._keeper is not None
        assert rl._keeper.registered == 1
        assert await stay.stop() == [None]
        assert rl._keeper.registered == 0


async def test_aclose_ends_the_extender_task() -> None:
    clock = FakeClock()
    nodes = nodes_on(clock)
    rl = make(nodes, clock, ttl=60.0)
    holders = Holders(rl, 3)
    await holders.entered()
    extender = rl._keeper
    assert extender is not None
    task = extender._task
    assert task is not None
    assert not task.done()
    await asyncio.wait_for(rl.aclose(), PATIENCE)  # not after the next due (20 s)
    assert task.done()
    assert not rl._tasks
    for result in await holders.results():
        assert isinstance(result, LockLost)
        assert "closed" in str(result)
    assert all(not n.store for n in nodes)
    assert extender.registered == 0


async def test_without_auto_extension_the_block_is_cancelled_at_the_deadline() -> None:
    clock = RealClock()
    nodes = nodes_on(clock)
    seen: list[tuple[float, float]] = []

    def on_lost(lock: Lock) -> None:
        seen.append((clock(), lock.valid_until))

    async with make(nodes, clock, ttl=0.4, node_timeout=0.1) as rl:
        reached = False
        with pytest.raises(LockLost, match="validity ran out before the block ended"):
            async with rl.lock("r", auto_extend=False, on_lost=on_lost) as lock:
                first = lock.valid_until
                await asyncio.sleep(0.1)
                await lock.extend()  # by hand: the watch follows the new deadline
                assert lock.valid_until > first
                await asyncio.sleep(30)
                reached = True
        assert not reached
        [(when, deadline)] = seen
        assert when >= deadline > first
        assert "extend_many" not in nodes[0].calls
        assert rl._keeper is None


async def test_nodes_that_lost_their_data_lose_the_lock() -> None:
    """An extension is never quarantined: a node that lost its data has lost
    the key too, so it answers no, and a quorum of no loses the lock."""
    clock = FakeClock()
    nodes = nodes_on(clock)
    votes: list[Vote] = []

    def on_lost(lock: Lock) -> None:
        votes.extend(o.vote for o in lock.outcomes)

    rl = make(nodes, clock, ttl=1.0, node_timeout=0.05)
    async with rl:
        holders = Holders(rl, 1, on_lost=on_lost)
        await holders.entered()
        nodes[1].lose_data()
        nodes[2].lose_data()
        [result] = await holders.results()
        assert isinstance(result, LockLost)
        assert "gone or taken on 2 of 3 nodes" in str(result)
        assert votes[1:] == [Vote.NO, Vote.NO]


@dataclass
class GatedNode(RecordingNode):
    """``extend_many`` waits for ``extend_gate``; other requests do not."""

    extend_gate: asyncio.Event = field(default_factory=asyncio.Event)
    events: list[str] = field(default_factory=list)

    async def extend_many(self, items: list[tuple[bytes, bytes, int]]) -> list[bool]:
        self.events.append("extend_many")
        try:
            await self.extend_gate.wait()
            return await super().extend_many(items)
        finally:
            self.events.append("extend_many ended")

    async def release(self, key: bytes, token: bytes, *, notify: bool = True) -> bool:
        self.events.append("release")
        return await super().release(key, token, notify=notify)


async def test_a_release_waits_for_the_extension_in_flight_on_its_node() -> None:
    clock = FakeClock()
    nodes = nodes_on(clock)
    slow = GatedNode("slow", clock)
    for node in nodes[:2]:
        node.calls.clear()
    async with make([*nodes[:2], slow], clock, ttl=0.9, node_timeout=0.5) as rl:
        async with rl.lock("r") as lock:
            before = lock.valid_until
            clock.advance(0.1)
            await until(lambda: slow.events == ["extend_many"])
            # Extended by the other two: the quorum does not wait for "slow".
            await until(lambda: lock.valid_until > before)
            asyncio.get_running_loop().call_later(0.05, slow.extend_gate.set)
        assert lock.released
        # The release to "slow" went on in the background, chained after the
        # extension in flight there.
        await lock._settled()
        assert slow.events == ["extend_many", "extend_many ended", "release"]
    assert all(not n.store for n in [*nodes[:2], slow])


async def test_a_lock_lapsing_after_its_block_ended_is_not_reported_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression (scenario 7's 1,000-3,740 "lock lost" warnings, every block
    ended cleanly): an extension in flight when the block ended, answered after
    the lock's validity had run out, marked the lock lost and warned while its
    release was under way. The keeper no longer keeps it by then: its lapse is
    no news."""
    clock = FakeClock()
    nodes = [GatedNode(f"gated{i}", clock) for i in range(3)]
    leave = asyncio.Event()
    held: list[Lock] = []
    async with make(nodes, clock, ttl=0.9, node_timeout=5.0) as rl:

        async def block() -> None:
            async with rl.lock("r") as lock:
                held.append(lock)
                await leave.wait()

        task = asyncio.create_task(block())
        await until(lambda: all(n.events == ["extend_many"] for n in nodes))
        leave.set()  # the block ends; its release waits for the extension
        for _ in range(5):
            await asyncio.sleep(0)
        assert not task.done()
        clock.advance(10.0)  # the lock's validity runs out meanwhile
        for node in nodes:
            node.extend_gate.set()
        with caplog.at_level("WARNING", logger="redlock_aio"):
            await asyncio.wait_for(task, PATIENCE)  # the block raised nothing
        [lock] = held
        assert lock.released
        assert not lock.lost
        assert [r for r in caplog.records if "lost" in r.getMessage()] == []


async def test_at_most_a_few_chunks_are_in_flight() -> None:
    """A node runs requests in order: chunks sent all at once would make every
    other request of the client (a fresh acquire) wait behind all of them."""
    clock = FakeClock()
    nodes = [HoldingNode(f"fake{i}", clock) for i in range(3)]
    count = (IN_FLIGHT + 2) * CHUNK
    async with make(nodes, clock, ttl=1.5) as rl:
        locks, entries = await registered_together(rl, clock, count)
        before = locks[0].valid_until
        keeper = rl._keeper_of()
        await until(lambda: all(n.extends_held == IN_FLIGHT for n in nodes))
        for _ in range(50):  # turns of the loop in which more chunks could go
            await asyncio.sleep(0)
        assert [n.most_extends_held for n in nodes] == [IN_FLIGHT] * 3
        for node in nodes:
            node.extends_go.set()
        await until(lambda: all(lock.valid_until > before for lock in locks))
        assert [n.most_extends_held for n in nodes] == [IN_FLIGHT] * 3
        assert all(len(n.batches) >= count // CHUNK for n in nodes)
        for entry in entries:
            keeper.remove(entry)
        for lock in locks:
            await lock.release()
