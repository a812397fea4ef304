"""MuxNode's connection on a fake transport: a timed-out request keeps the
connection in step while the node is answering, and aborts it when the node has
sent nothing since."""

from __future__ import annotations

import asyncio

import pytest
import redis.exceptions

from redlock_aio._wire import MuxNode, _Conn


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written.append(data)

    def abort(self) -> None:
        self.aborted = True


def connection() -> tuple[_Conn, FakeTransport]:
    conn = _Conn(MuxNode(host="127.0.0.1", port=1), asyncio.get_running_loop())
    transport = FakeTransport()
    conn.connection_made(transport)
    return conn, transport


async def test_a_timeout_while_replies_stream_in_keeps_the_connection() -> None:
    conn, transport = connection()
    first = conn.send(b"*1\r\n$4\r\nPING\r\n")
    mark = conn.received
    second = conn.send(b"*1\r\n$4\r\nPING\r\n")
    conn.data_received(b"+one\r\n")  # the node answers the first request
    second.cancel()
    conn.cancelled(mark)  # second timed out, but the node is alive
    assert conn.failure is None
    assert not transport.aborted
    third = conn.send(b"*1\r\n$4\r\nPING\r\n")
    conn.data_received(b"+two\r\n+three\r\n")  # second's reply is dropped
    assert first.result() == b"one"
    assert third.result() == b"three"


async def test_a_timeout_on_a_silent_node_aborts_and_fails_the_rest() -> None:
    conn, transport = connection()
    mark = conn.received
    first = conn.send(b"*1\r\n$4\r\nPING\r\n")
    second = conn.send(b"*1\r\n$4\r\nPING\r\n")
    first.cancel()
    conn.cancelled(mark)
    assert transport.aborted
    assert conn.failure is not None
    with pytest.raises(redis.exceptions.ConnectionError, match="no reply within"):
        second.result()
