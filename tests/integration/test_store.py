"""Tests of ``redlock_aio.testing._store``: the protected store logs each write
as it lands, and its checker finds a write made after the writer's validity
while another client held the lock (real redis-server nodes, real locks)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import TYPE_CHECKING

import pytest

from redlock_aio import AsyncRedlock
from redlock_aio.testing import MutexChecker, ProtectedStore, StoreError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from redlock_aio import Lock
    from redlock_aio.testing import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

#: Generous bound for "must happen" on a loaded 2-core machine.
ANSWER_TIMEOUT = 10.0


@pytest.fixture
def store() -> Iterator[ProtectedStore]:
    with ProtectedStore() as s:
        yield s
    assert not s.running


@pytest.fixture
async def redlock(cluster: LocalCluster) -> AsyncIterator[AsyncRedlock]:
    # No restart quarantine: the suite's nodes may be fresh.
    async with AsyncRedlock(
        cluster.urls, ttl=5.0, node_timeout=1.0, retry_delay=0.01, restart_quarantine=0
    ) as rl:
        yield rl


async def expired(lock: Lock) -> None:
    """Wait until the lock's validity has run out (no extension)."""
    await asyncio.sleep(lock.remaining() + 0.01)
    assert lock.remaining() == 0


async def late_write_while_another_holds(
    redlock: AsyncRedlock, store: ProtectedStore, checker: MutexChecker
) -> bool:
    """a writes in time, lets its lock run out, b acquires; then a writes again:
    after its validity and inside b's window. Returns what a's late write got."""
    async with store.client() as client:
        a = await redlock.acquire("r", ttl=0.5)
        granted_a = checker.granted()
        assert await client.write("counter", "1", lock=a, writer="a")
        await expired(a)
        b = await asyncio.wait_for(redlock.acquire("r"), ANSWER_TIMEOUT)
        granted_b = checker.granted()
        accepted = await client.write("counter", "stale", lock=a, writer="a")
        checker.record("a", a, granted_a)
        assert await client.write("counter", "2", lock=b, writer="b")
        await b.release()
        checker.record("b", b, granted_b)
    return accepted


async def test_a_write_after_validity_while_another_holds_is_found(
    redlock: AsyncRedlock, store: ProtectedStore
) -> None:
    checker = MutexChecker()
    assert await late_write_while_another_holds(redlock, store, checker) is True
    assert checker.violations() == []  # the windows alone look fine
    store_check = store.checker(checker.holdings)
    [violation] = store_check.violations()
    assert violation.write.writer == "a"
    assert violation.write.value == "stale"
    assert violation.holding.holder == "b"
    assert [w.value for w in store_check.late()] == ["stale"]
    assert store_check.refused() == []
    assert store.value("counter") == "2"


async def test_reject_late_refuses_the_late_write(redlock: AsyncRedlock) -> None:
    checker = MutexChecker()
    with ProtectedStore(reject_late=True) as store:
        assert await late_write_while_another_holds(redlock, store, checker) is False
    store_check = store.checker(checker.holdings)
    assert store_check.violations() == []
    assert store_check.late() == []
    [refused] = store_check.refused()
    assert refused.value == "stale"
    assert refused.late
    assert [w.value for w in store.writes() if w.accepted] == ["1", "2"]
    assert store.value("counter") == "2"


async def test_writes_carry_the_lock_and_are_stamped_on_arrival(
    redlock: AsyncRedlock, store: ProtectedStore
) -> None:
    async with store.client() as client:
        assert await client.read("k") is None
        async with redlock.lock(b"\x00r") as lock:
            before = time.monotonic()
            assert await client.write("k", "v", lock=lock, writer="me")
            after = time.monotonic()
        assert await client.read("k") == "v"
    [w] = store.writes()
    assert (w.writer, w.resource, w.key, w.value) == ("me", b"\x00r".hex(), "k", "v")
    assert w.token == lock.token.hex()
    assert before <= w.arrived <= after
    assert w.valid_until > w.arrived
    assert not w.late


async def test_the_stamp_is_not_delayed_by_a_blocked_event_loop(
    store: ProtectedStore,
) -> None:
    request = {
        "op": "write",
        "key": "k",
        "value": "v",
        "writer": "w",
        "resource": "r",
        "token": "t",
        "valid_until": 0.0,
    }
    with socket.create_connection(("127.0.0.1", store.port)) as sock:
        sock.sendall(json.dumps(request).encode() + b"\n")
        # Block this event loop (no await) until the store has the write.
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while not store.writes():
            assert time.monotonic() < deadline, "the store never got the write"
            time.sleep(0.001)  # noqa: ASYNC251 - the point: the loop is blocked
        unblocked = time.monotonic()
        assert json.loads(sock.makefile().readline()) == {"ok": True}
    assert store.writes()[0].arrived < unblocked


async def test_bad_requests_are_errors_and_the_connection_carries_on(
    store: ProtectedStore,
) -> None:
    client = store.client()
    try:
        with pytest.raises(StoreError, match="unknown op"):
            await client._request({"op": "nope"})
        with pytest.raises(StoreError, match="bad request"):
            await client._request({"op": "write", "key": "k"})
        assert await client.read("k") is None
    finally:
        await client.aclose()
    assert store.writes() == []


async def test_a_cancelled_request_does_not_leave_the_client_out_of_step(
    redlock: AsyncRedlock,
) -> None:
    paused, go_on = threading.Event(), threading.Event()
    with ProtectedStore() as store:
        real_answer = store._answer

        def slow_answer(line: bytes, arrived: float) -> bytes:
            if not paused.is_set():  # the first request waits for the test
                paused.set()
                go_on.wait(ANSWER_TIMEOUT)
            return real_answer(line, arrived)

        store._answer = slow_answer  # type: ignore[method-assign]
        async with store.client() as client, redlock.lock("r") as lock:
            first = asyncio.ensure_future(client.write("k", "1", lock=lock, writer="w"))
            assert await asyncio.to_thread(paused.wait, ANSWER_TIMEOUT)
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            go_on.set()  # the first reply goes to the closed connection
            # A new connection: this reply is its own, not the first one's.
            assert await client.read("k") == "1"
            assert await client.write("k", "2", lock=lock, writer="w")
            assert await client.read("k") == "2"


def test_stop_is_idempotent_and_start_listens_again() -> None:
    store = ProtectedStore()
    with pytest.raises(RuntimeError, match="start"):
        _ = store.port
    store.start()
    port, thread = store.port, store._thread
    assert thread is not None
    assert thread.is_alive()
    store.stop()
    store.stop()
    assert not thread.is_alive()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT)
    with store:
        assert store.port == port
        with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT):
            pass
    assert not store.running


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.1", "example.com"])
def test_refuses_non_loopback_addresses(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        ProtectedStore(host)
