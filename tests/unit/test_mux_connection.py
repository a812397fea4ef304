"""MuxNode's connection on a fake transport: it owns every request's timeout.
A request is timed from when it was written; one that times out while the node
still answers this client's backlog gets grace (never past its ``not_after``);
one that times out with no complete reply since it was written fails the
connection (retired: its socket stays open for the replies to what was written
on it, and closes once they are in), a reply that never ends aborts it;
``aclose()`` lets a node still answering finish first; nothing is written into
a transport that is closing. Deadlines are set by hand and the check run
directly, so nothing here depends on this machine's speed."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, TypeVar

import pytest
import redis.exceptions

from redlock_aio import _commands
from redlock_aio._mux import (
    BACKLOG_GRACE,
    CORK_DEPTH,
    MAX_REPLY_BYTES,
    MAX_RETIRED,
    RETIRED_FOR,
    WINDOW,
    MuxNode,
    _Connection,
)

if TYPE_CHECKING:
    from collections.abc import Callable

_P = TypeVar("_P", bound=asyncio.Protocol)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.aborted = False
        self.closing = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        assert not self.closing, "written into a closing transport"
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.aborted = True
        self.closing = True
        protocol = self.get_protocol()
        if protocol is not None:
            asyncio.get_running_loop().call_soon(protocol.connection_lost, None)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return getattr(self, "protocol", None)  # type: ignore[return-value]


def connected(
    node: MuxNode | None = None,
) -> tuple[MuxNode, _Connection, FakeTransport]:
    """A node (new, or ``node``) whose main connection is a new one, open on a
    fake transport."""
    if node is None:
        node = MuxNode(host="127.0.0.1", port=1)
    conn = _Connection(node, asyncio.get_running_loop())
    transport = FakeTransport()
    transport.protocol = conn  # type: ignore[attr-defined]
    conn.connection_made(transport)
    conn.set_up([])
    node._conn = conn
    return node, conn, transport


def ping(
    node: MuxNode, timeout: float = 0.5, **kwargs: float
) -> asyncio.Future[object]:
    return node.submit(_commands.call("PING"), timeout=timeout, **kwargs)  # type: ignore[arg-type]


def due(fut: asyncio.Future[object], late: float = 0.001) -> None:
    """Make a request due now, as if its timeout had passed ``late`` seconds ago."""
    fut.deadline = asyncio.get_running_loop().time() - late  # type: ignore[attr-defined]


async def test_a_request_is_written_at_once_and_answered_in_order() -> None:
    node, conn, transport = connected()
    first, second = ping(node), ping(node)
    assert transport.written == [b"*1\r\n$4\r\nPING\r\n"] * 2
    conn.data_received(b"+one\r\n+two\r\n")
    assert (first.result(), second.result()) == (b"one", b"two")


async def test_a_timeout_while_replies_stream_in_gets_grace_and_keeps_the_connection() -> (
    None
):
    node, conn, transport = connected()
    first, second = ping(node), ping(node)
    conn.data_received(b"+one\r\n")  # the node answers: busy, not stuck
    due(second)
    conn._check()
    assert not second.done()  # grace: a backlog is not a failure
    assert conn.failure is None
    for _ in range(BACKLOG_GRACE):
        due(second)
        conn._check()
    assert isinstance(second.exception(), TimeoutError)  # grace runs out
    assert conn.failure is None
    assert not transport.aborted
    third = ping(node)
    conn.data_received(b"+two\r\n+three\r\n")  # second's reply is dropped
    assert first.result() == b"one"
    assert third.result() == b"three"


async def test_no_grace_past_not_after() -> None:
    node, conn, _ = connected()
    loop = asyncio.get_running_loop()
    ping(node)
    second = ping(node, not_after=loop.time() - 0.001)
    conn.data_received(b"+one\r\n")
    due(second)
    conn._check()
    assert isinstance(second.exception(), TimeoutError)


async def test_a_timeout_on_a_silent_node_fails_the_rest_and_retires_the_connection() -> (
    None
):
    """The node is silent past a timeout: every request fails now and the
    next one goes on a new connection; the socket stays open (a node that only
    stalled still runs what it was sent: releases) and closes once every reply
    owed is read."""
    node, conn, transport = connected()
    first, second = ping(node), ping(node)
    due(first)
    conn._check()
    assert isinstance(first.exception(), TimeoutError)
    assert conn.failure is not None
    with pytest.raises(redis.exceptions.ConnectionError, match="no reply within"):
        second.result()
    assert node._conn is None  # the next request opens another
    assert not transport.aborted
    assert conn.unanswered() == 2
    conn.data_received(b"+one\r\n+tw")
    assert not transport.aborted
    conn.data_received(b"o\r\n")  # all in: closed
    assert transport.aborted


async def test_a_retired_connection_is_closed_after_its_time() -> None:
    node, conn, transport = connected()
    fut = ping(node, timeout=0.01)
    due(fut)
    conn._check()
    assert isinstance(fut.exception(), TimeoutError)
    assert not transport.aborted
    await asyncio.sleep(0.01 * RETIRED_FOR + 0.05)
    assert transport.aborted


async def test_at_most_a_few_connections_of_a_node_are_retired() -> None:
    node = MuxNode(host="127.0.0.1", port=1)
    transports = []
    for _ in range(MAX_RETIRED + 1):
        _, conn, transport = connected(node)
        fut = ping(node)
        due(fut)
        conn._check()
        assert isinstance(fut.exception(), TimeoutError)
        transports.append(transport)
    assert [t.aborted for t in transports] == [False] * MAX_RETIRED + [True]
    await node.aclose()


async def test_aclose_cancelled_while_it_waits_for_the_node_still_closes_the_socket() -> (
    None
):
    node, _, transport = connected()
    fut = ping(node, timeout=5.0)
    closing = asyncio.ensure_future(node.aclose())
    await asyncio.sleep(0.05)  # waiting for the node's reply
    assert not transport.aborted
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert transport.aborted
    assert isinstance(fut.exception(), redis.exceptions.ConnectionError)


async def test_a_release_after_a_request_lost_with_a_retired_connection_follows_it() -> (
    None
):
    """The SET may still run when the node wakes: a release ordered after it
    is written behind it on the retired connection too (its reply dropped),
    as well as sent as usual; a request that is not repeatable is not."""
    node, conn, transport = connected()
    set_nx = node.submit(_commands.set_nx(b"k", b"t", 1000), timeout=0.5)
    due(set_nx)
    conn._check()
    assert isinstance(set_nx.exception(), TimeoutError)
    written = len(transport.written)
    again = node.submit(_commands.set_nx(b"k", b"u", 1000), timeout=0.5, after=set_nx)
    assert len(transport.written) == written
    release = _commands.release(b"k", b"t", notify=False)
    fut = node.submit(release, timeout=0.5, after=set_nx)
    assert transport.written[written:] == [release.resp]
    assert conn.unanswered() == 2
    await asyncio.gather(again, fut, return_exceptions=True)  # no server at :1
    await node.aclose()


async def test_aclose_lets_a_node_still_answering_finish_first() -> None:
    """Requests written but unanswered when the node is closed (releases
    that timed out on a slow node, say): aclose() reads their replies before
    it closes the socket, which would lose those the node has not read yet."""
    node, conn, transport = connected()
    first, second = ping(node, timeout=5.0), ping(node, timeout=5.0)
    conn.data_received(b"+one\r\n")  # the node answers: busy, not stuck
    for _ in range(BACKLOG_GRACE + 1):
        due(second)
        conn._check()
    assert first.result() == b"one"
    assert isinstance(second.exception(), TimeoutError)  # nobody waits for it
    closing = asyncio.ensure_future(node.aclose())
    await asyncio.sleep(0.05)
    assert not transport.aborted
    conn.data_received(b"+two\r\n")
    await asyncio.wait_for(closing, 5.0)
    assert transport.aborted


async def test_a_check_that_comes_late_is_the_clients_stall_not_the_nodes() -> None:
    """The client stalled (a long turn of its own) past a request's deadline:
    replies may be waiting unread, so the request gets a timeout more instead
    of the connection being judged stuck; checked in time, it is."""
    node, conn, _ = connected()
    fut = ping(node)
    due(fut, late=10.0)
    conn._check()
    assert not fut.done()
    assert conn.failure is None
    due(fut)
    conn._check()
    assert isinstance(fut.exception(), TimeoutError)
    assert conn.failure is not None


async def test_a_reply_that_never_ends_aborts_the_connection() -> None:
    """A node that announces a huge bulk string and keeps streaming: bytes keep
    arriving, but no reply completes; cut at the size cap (and at the
    request's timeout, whichever comes first), not buffered for ever."""
    node, conn, transport = connected()
    fut = ping(node)
    conn.data_received(b"$999999999999\r\n")
    chunk = b"x" * 65536
    for _ in range(MAX_REPLY_BYTES // len(chunk) + 1):
        if conn.failure is not None:
            break
        conn.data_received(chunk)
    assert transport.aborted
    with pytest.raises(redis.exceptions.ConnectionError, match="a reply of over"):
        fut.result()


async def test_a_streaming_reply_is_also_cut_at_the_timeout() -> None:
    node, conn, transport = connected()
    fut = ping(node)
    conn.data_received(b"$999999999\r\nxxxx")  # bytes, but no complete reply
    due(fut)
    conn._check()
    assert transport.aborted
    assert isinstance(fut.exception(), TimeoutError)


async def test_a_burst_is_timed_from_its_write_at_the_end_of_the_turn() -> None:
    node, _, transport = connected()
    loop = asyncio.get_running_loop()
    futs = [ping(node) for _ in range(20)]
    assert len(transport.written) == 9  # then corked until the end of the turn
    corked = futs[9:]
    assert all(f.deadline == float("inf") for f in corked)  # type: ignore[attr-defined]
    await asyncio.sleep(0)
    assert len(transport.written) == 10
    assert all(f.deadline >= loop.time() for f in corked)  # type: ignore[attr-defined]


async def test_a_held_request_flushed_into_a_burst_is_timed_from_its_write() -> None:
    """A request held while connecting has a deadline for the wait; written
    into a corked burst, it is timed from the burst's write at the end of the
    turn, not by that deadline meanwhile."""
    node, conn, _ = connected()
    for _ in range(CORK_DEPTH + 1):
        ping(node)  # busy: the next writes of this turn are held
    held = ping(node)
    assert held.deadline == float("inf")  # type: ignore[attr-defined]
    late = ping(node)
    late.deadline = asyncio.get_running_loop().time() - 10  # type: ignore[attr-defined]
    late.conn = None  # type: ignore[attr-defined]
    conn._waiters.remove(late)  # type: ignore[arg-type]
    conn.send(late)  # type: ignore[arg-type]  # flushed from the queue, still corked
    assert late.deadline == float("inf")  # type: ignore[attr-defined]
    conn._check()
    assert not late.done()
    await asyncio.sleep(0)  # the end of the turn: the burst is written
    assert late.deadline != float("inf")  # type: ignore[attr-defined]
    assert not late.done()


async def test_nothing_is_written_into_a_closing_transport() -> None:
    node, conn, transport = connected()
    transport.closing = True  # asyncio saw a write error; connection_lost comes later
    fut = ping(node)
    assert conn.failure is not None  # the connection is given up, not written to
    assert not fut.done()  # held for the next connection
    node._fail_queued(redis.exceptions.ConnectionError, "test over")
    assert isinstance(fut.exception(), redis.exceptions.ConnectionError)


class SlowToConnect(MuxNode):
    """Connects (to a fake transport) once ``opened`` is set."""

    __slots__ = ("opened", "transport")

    def __init__(self) -> None:
        super().__init__(host="127.0.0.1", port=1)
        self.opened = asyncio.Event()
        self.transport = FakeTransport()

    async def _create(self, factory: Callable[[], _P]) -> _P:
        await self.opened.wait()
        conn = factory()
        self.transport.protocol = conn  # type: ignore[attr-defined]
        conn.connection_made(self.transport)
        return conn


async def test_requests_made_while_connecting_are_timed_from_their_write() -> None:
    node = SlowToConnect()
    loop = asyncio.get_running_loop()
    opened, transport = node.opened, node.transport
    # A timeout no loaded machine reaches while the test opens the connection.
    futs = [ping(node, timeout=60.0) for _ in range(5)]
    assert transport.written == []
    await asyncio.sleep(0.01)
    opened.set()
    opened_at = loop.time()

    async def written() -> None:
        while any(f.deadline == float("inf") or f.conn is None for f in futs):  # type: ignore[attr-defined]  # noqa: ASYNC110 (a state, not an event)
            await asyncio.sleep(0)

    await asyncio.wait_for(written(), 30)
    # Timed from their write, after the connection opened; not from submit.
    assert all(f.deadline >= opened_at + 60.0 for f in futs)  # type: ignore[attr-defined]
    assert transport.written
    node._conn.data_received(b"+OK\r\n" * 6 + b"+PONG\r\n" * 5)  # type: ignore[union-attr]
    assert [f.result() for f in futs] == [b"PONG"] * 5
    await node.aclose()


# -- the window: at most WINDOW requests in flight per connection -------------------


async def test_requests_beyond_the_window_wait_unwritten_and_untimed() -> None:
    """Regression (scenario 7): a burst was written whole, and the requests
    behind the client's own backlog timed out before it could read their
    replies. Beyond ``WINDOW`` in flight, requests wait in the client, not
    timed (so no check can time them out), and are written, in order, as
    replies make room; each is timed from its own write."""
    node, conn, transport = connected()
    loop = asyncio.get_running_loop()
    futs = [ping(node) for _ in range(WINDOW + 10)]
    await asyncio.sleep(0)  # the turn's corked writes go out
    written = sum(chunk.count(b"PING") for chunk in transport.written)
    assert written == WINDOW
    waiting = futs[WINDOW:]
    assert all(f.deadline == float("inf") for f in waiting)  # type: ignore[attr-defined]
    assert all(f.sent_at == float("inf") for f in waiting)  # type: ignore[attr-defined]
    conn._check()  # no check judges them
    assert not any(f.done() for f in waiting)
    before = loop.time()
    conn.data_received(b"+PONG\r\n" * 10)  # room for ten
    await asyncio.sleep(0)
    written = sum(chunk.count(b"PING") for chunk in transport.written)
    assert written == WINDOW + 10
    assert all(before <= f.sent_at < float("inf") for f in waiting)  # type: ignore[attr-defined]
    assert all(f.deadline < float("inf") for f in waiting)  # type: ignore[attr-defined]
    conn.data_received(b"+PONG\r\n" * WINDOW)
    assert all(f.result() == b"PONG" for f in futs)


async def test_a_request_waiting_for_the_window_is_cancelled_without_harm() -> None:
    """Cancelled before it was written: nothing is aborted (it was never on
    the wire), and it is skipped when room comes."""
    node, conn, transport = connected()
    futs = [ping(node) for _ in range(WINDOW + 2)]
    await asyncio.sleep(0)
    futs[WINDOW].cancel()
    assert conn.failure is None
    conn.data_received(b"+PONG\r\n" * 2)
    await asyncio.sleep(0)
    written = sum(chunk.count(b"PING") for chunk in transport.written)
    assert written == WINDOW + 1  # the cancelled one skipped
    conn.data_received(b"+PONG\r\n" * WINDOW)
    assert futs[-1].result() == b"PONG"


async def test_a_failed_connection_fails_the_requests_waiting_for_the_window() -> None:
    node, conn, _ = connected()
    futs = [ping(node) for _ in range(WINDOW + 3)]
    conn.fail(redis.exceptions.ConnectionError, "gone")
    assert all(
        isinstance(f.exception(), redis.exceptions.ConnectionError) for f in futs
    )


async def test_a_request_is_stamped_before_its_bytes_are_written() -> None:
    """``sent_at`` is read before the write: the node cannot have run the
    request earlier, so a validity counted from it is never too long."""
    node, _, transport = connected()
    stamps: list[float] = []
    loop = asyncio.get_running_loop()
    write = transport.write

    def recording(data: bytes) -> None:
        stamps.append(loop.time())
        write(data)

    transport.write = recording  # type: ignore[method-assign]
    fut = ping(node)
    assert fut.sent_at <= stamps[0]  # type: ignore[attr-defined]


# -- the urgent lane ------------------------------------------------------------------


def connected_lane(node: MuxNode) -> tuple[_Connection, FakeTransport]:
    """The node's urgent lane, connected to a fake transport."""
    lane = node._urgent_lane()
    conn = _Connection(lane, asyncio.get_running_loop())
    transport = FakeTransport()
    conn.connection_made(transport)
    conn.set_up([])
    lane._conn = conn
    return conn, transport


async def test_the_renewal_lane_connects_the_way_its_node_does() -> None:
    """Regression: a MuxNode subclass that makes its own connections (a test
    double, the benchmark's fake transport) had its renewal lane made as a
    plain MuxNode, which dialled the node's host and port (here 127.0.0.1:1,
    refused) instead."""
    node = SlowToConnect()
    node.opened.set()
    command = _commands.extend(b"k", b"t", 1000)
    renewal = node.submit(command, timeout=0.05)
    for _ in range(10):  # connected, set up, written
        await asyncio.sleep(0)
    assert b"".join(node.transport.written).endswith(command.resp)
    await asyncio.gather(renewal, return_exceptions=True)
    await node.aclose()


async def test_renewals_go_on_their_own_connection_and_the_rest_do_not() -> None:
    node, _, transport = connected()
    lane_conn, lane_transport = connected_lane(node)
    extend = node.submit(_commands.extend(b"k", b"t", 1000), timeout=1.0)
    batch = node.submit(_commands.extend_many([(b"k", b"t", 1000)]), timeout=1.0)
    release = node.submit(_commands.release(b"k", b"t", notify=False), timeout=1.0)
    assert len(lane_transport.written) == 2  # the renewals
    assert len(transport.written) == 1  # the release
    lane_conn.data_received(b":1\r\n*1\r\n:1\r\n")
    assert (extend.result(), batch.result()) == (1, [1])
    assert not release.done()


async def test_a_request_after_one_on_the_other_connection_waits_for_it() -> None:
    """``after`` holds across the two connections: a release ordered after a
    renewal still in flight on the urgent lane is written only once that is
    answered, and a renewal ordered after a SET still in flight on the main
    connection likewise."""
    node, _, transport = connected()
    lane_conn, lane_transport = connected_lane(node)
    set_nx = node.submit(_commands.set_nx(b"k", b"t", 1000), timeout=1.0)
    extend = node.submit(_commands.extend(b"k", b"t", 1000), timeout=1.0, after=set_nx)
    assert lane_transport.written == []  # waits for the SET
    conn = node._conn
    assert conn is not None
    conn.data_received(b"+OK\r\n")
    assert set_nx.result() == b"OK"
    await asyncio.sleep(0)  # done callbacks run in the next turn
    assert len(lane_transport.written) == 1
    release = node.submit(
        _commands.release(b"k", b"t", notify=False), timeout=1.0, after=extend
    )
    assert len(transport.written) == 1  # waits for the renewal
    lane_conn.data_received(b":1\r\n")
    await asyncio.sleep(0)
    assert len(transport.written) == 2
    conn.data_received(b":1\r\n")
    assert release.result() == 1
