"""The round's shared deadline timer (:class:`Fleet`), on posting fake nodes:
rounds that hang expire at their deadline however many others settled before,
and no timer is left once every round has settled."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from redlock_aio._quorum import Decision, Vote
from redlock_aio._round import Ask, Fleet, Round

if TYPE_CHECKING:
    from collections.abc import Hashable


class PostingNode:
    """A node that answers posted requests on the next loop turn, or never
    (``hang``)."""

    reply_type: type[asyncio.Future[Any]] = asyncio.Future

    def __init__(self, name: str, hang: bool = False) -> None:
        self.name = name
        self.identity: Hashable = name
        self.hang = hang

    def post(
        self,
        payload: bytes,
        after: asyncio.Future[Any] | None = None,
        script: str | None = None,
        hook: Any = None,
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = self.reply_type(loop=loop)
        if hook is not None:
            fut.add_done_callback(hook)
        if not self.hang:
            loop.call_soon(fut.set_result, b"OK")
        return fut

    async def set_nx(self, key: bytes, token: bytes, ttl_ms: int) -> bool:
        raise AssertionError("the posted path must be used")

    async def acquire(
        self, key: bytes, token: bytes, ttl_ms: int, marker: bytes, quarantine_ms: int
    ) -> object:
        raise AssertionError("the posted path must be used")

    async def init_marker(self, marker: bytes) -> None:
        raise AssertionError("the posted path must be used")

    async def release(self, key: bytes, token: bytes, *, notify: bool = True) -> bool:
        raise AssertionError("the posted path must be used")

    async def extend(self, key: bytes, token: bytes, ttl_ms: int) -> bool:
        raise AssertionError("the posted path must be used")

    async def extend_many(self, items: Any) -> list[bool]:
        raise AssertionError("the posted path must be used")

    async def aclose(self) -> None:
        pass


def spawn(coro: Any) -> asyncio.Task[object]:
    return asyncio.get_running_loop().create_task(coro)


async def _no_call(node: Any) -> bool:
    raise AssertionError("the posted path must be used")


ASK = Ask(_no_call, b"*1\r\n$4\r\nPING\r\n", b"OK")


async def test_rounds_decide_at_quorum_and_a_hung_node_times_out() -> None:
    nodes = [PostingNode("a"), PostingNode("b"), PostingNode("c", hang=True)]
    fleet = Fleet(nodes, spawn)
    rounds = [Round(fleet, ASK, timeout=0.2, needed=2) for _ in range(200)]
    assert [await r.decided for r in rounds] == [Decision.REACHED] * 200
    # Each round still waits for the hung node, until its own deadline.
    assert len(fleet.rounds) == 200
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while fleet.rounds and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    assert not fleet.rounds
    for r in rounds:
        assert [o.vote for o in r.outcomes] == [Vote.YES, Vote.YES, Vote.TIMEOUT]
    # Nothing left to time: the timer is not re-armed.
    await asyncio.sleep(0.01)
    assert fleet._timer is None
    assert not fleet._deadlines


async def test_a_late_round_expires_on_time_behind_many_settled_ones() -> None:
    """Settled rounds stay in the deadline heap until they reach its head; a
    hanging round behind them still expires at its own deadline, and a round
    with an earlier deadline re-arms the timer sooner."""
    good = [PostingNode("a"), PostingNode("b"), PostingNode("c")]
    fleet = Fleet(good, spawn)
    for _ in range(100):
        assert await Round(fleet, ASK, timeout=5.0, needed=2).decided is (
            Decision.REACHED
        )
    loop = asyncio.get_running_loop()
    good[2].hang = True
    start = loop.time()
    late = Round(fleet, ASK, timeout=0.3, needed=3, wait_all=True)
    assert await late.decided is Decision.FAILED
    elapsed = loop.time() - start
    assert 0.3 <= elapsed < 4.0  # its own deadline, not the 5 s ones ahead
    assert late.outcomes[2].vote is Vote.TIMEOUT
    fleet.close()
    assert fleet._timer is None


class BusyReply(asyncio.Future[Any]):
    """A posted request whose node is still answering others (a backlog)."""

    def answering(self, now: float, window: float) -> bool:
        return True


class BusyNode(PostingNode):
    """Never answers this request, but is still answering others."""

    reply_type = BusyReply

    def __init__(self, name: str) -> None:
        super().__init__(name, hang=True)


async def test_a_node_still_answering_gets_more_time_a_silent_one_does_not() -> None:
    from redlock_aio._round import BACKLOG_GRACE

    nodes = [PostingNode("a"), BusyNode("b"), PostingNode("c", hang=True)]
    fleet = Fleet(nodes, spawn)
    loop = asyncio.get_running_loop()
    start = loop.time()
    rnd = Round(fleet, ASK, timeout=0.1, needed=3, wait_all=True)
    assert await rnd.decided is Decision.FAILED
    elapsed = loop.time() - start
    # The silent node timed out at the first deadline; the busy one had
    # BACKLOG_GRACE more timeouts before it did.
    assert elapsed >= 0.1 * (1 + BACKLOG_GRACE)
    assert [o.vote for o in rnd.outcomes] == [Vote.YES, Vote.TIMEOUT, Vote.TIMEOUT]
    fleet.close()
