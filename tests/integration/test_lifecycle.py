"""A client's life: closing with work in flight, a second event loop, and the
pub/sub connection's failures."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING

import pytest

from redlock_aio import AsyncRedlock, RedlockClosed, RedlockError
from redlock_aio._pubsub import Channels
from redlock_aio.testing import FaultProxy, LocalCluster

from .helpers import keys

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.integration


async def until(condition: Callable[[], bool], within: float = 20.0) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_aclose_takes_back_the_keys_of_an_acquire_in_flight(
    cluster: LocalCluster,
) -> None:
    proxies = [await FaultProxy("127.0.0.1", s.port).start() for s in cluster]
    try:
        rl = AsyncRedlock([p.url for p in proxies], ttl=30.0, node_timeout=2.0)
        await (await rl.acquire("warm-up")).release()  # connected
        for proxy in proxies:
            proxy.add_latency(0.2, direction="reply")
        task = asyncio.create_task(rl.acquire("r"))
        # The SETs are applied, their replies still on the way.
        await until(lambda: all(k is not None for k in keys(cluster)))
        await rl.aclose()
        assert keys(cluster) == [None, None, None]  # none of its keys is left
        with pytest.raises(RedlockClosed, match="aclose"):
            await task
    finally:
        for proxy in proxies:
            await proxy.aclose()


async def test_after_aclose_extend_and_release_raise_redlock_closed(
    cluster: LocalCluster,
) -> None:
    rl = AsyncRedlock(cluster.urls, ttl=30.0, node_timeout=1.0)
    lock = await rl.acquire("r")
    kept = await rl.acquire("s")
    await rl.aclose()  # releases both
    with pytest.raises(RedlockClosed):
        await lock.extend()
    await kept.release()  # released by aclose(): a no-op
    assert keys(cluster, "r") == keys(cluster, "s") == [None, None, None]


def test_a_second_event_loop_gets_a_clear_error(cluster: LocalCluster) -> None:
    """A module-level client used by two ``asyncio.run()`` calls (or by a
    session-scoped fixture and function-scoped tests) once hung for ever."""
    rl = AsyncRedlock(cluster.urls, ttl=5.0, node_timeout=1.0)
    first = asyncio.new_event_loop()
    try:

        async def use() -> None:
            await (await rl.acquire("r")).release()

        first.run_until_complete(use())

        async def from_another_loop() -> None:
            with pytest.raises(RedlockError, match="another event loop"):
                await rl.acquire("r")
            with pytest.raises(RedlockError, match="another event loop"):
                rl.lock("r")
            with pytest.raises(RedlockError, match="another event loop"):
                await rl.aclose()

        asyncio.run(asyncio.wait_for(from_another_loop(), 30))
        first.run_until_complete(use())  # still fine in its own loop
        first.run_until_complete(rl.aclose())
    finally:
        first.close()


def test_a_client_whose_loop_runs_in_another_thread_refuses_this_one(
    cluster: LocalCluster,
) -> None:
    """The check that a call comes from the client's own loop skips asking
    for the running loop when the client's loop is running in the caller's
    thread; a caller in another thread, with a loop of its own, is still
    refused while the client's loop runs."""
    rl = AsyncRedlock(cluster.urls, ttl=5.0, node_timeout=1.0)
    own = asyncio.new_event_loop()
    thread = threading.Thread(target=own.run_forever)
    thread.start()
    try:

        async def use() -> None:
            await (await rl.acquire("r")).release()

        asyncio.run_coroutine_threadsafe(use(), own).result(30)

        async def from_another_thread() -> None:
            with pytest.raises(RedlockError, match="another event loop"):
                await rl.acquire("r")

        asyncio.run(asyncio.wait_for(from_another_thread(), 30))
        asyncio.run_coroutine_threadsafe(use(), own).result(30)  # still fine
        asyncio.run_coroutine_threadsafe(rl.aclose(), own).result(30)
    finally:
        own.call_soon_threadsafe(own.stop)
        thread.join(30)
        own.close()


async def test_a_pub_sub_protocol_error_closes_that_connection_quietly() -> None:
    """A reply that is not RESP once reached asyncio as "Fatal error:
    protocol.data_received() call failed"."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)  # SUBSCRIBE
        writer.write(b"?not RESP\r\n")
        await reader.read(100)  # until the client closes
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()

    async def connect(factory: Callable[[], asyncio.Protocol]) -> asyncio.Protocol:
        _, protocol = await loop.create_connection(factory, "127.0.0.1", port)
        return protocol

    channels = Channels("liar", connect)
    try:
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(channels.subscribe(b"ch", lambda data: None), 10)
    finally:
        await channels.aclose()
        server.close()
        await server.wait_closed()


def subscribers(cluster: LocalCluster, channel: bytes) -> list[object]:
    return [s.command("PUBSUB", "NUMSUB", channel)[1] for s in cluster]  # type: ignore[index]


def pubsub_clients(cluster: LocalCluster) -> set[tuple[int, bytes]]:
    """The pub/sub connections of every node: (node, client id)."""
    found = set()
    for i, server in enumerate(cluster):
        listing = server.command("CLIENT", "LIST", "TYPE", "pubsub")
        assert isinstance(listing, bytes)
        found |= {(i, line.split()[0]) for line in listing.splitlines()}
    return found


async def test_waiters_subscribe_again_after_their_pub_sub_connection_drops(
    cluster: LocalCluster,
) -> None:
    channel = b"__redlock__:r"
    async with (
        AsyncRedlock(cluster.urls, ttl=30.0, node_timeout=1.0) as holder,
        # Polling only every 15-30 s: a waiter that lost its subscription
        # would wait that long.
        AsyncRedlock(
            cluster.urls, ttl=30.0, node_timeout=1.0, retry_delay=30, retry_delay_max=30
        ) as waiter,
    ):
        lock = await holder.acquire("r")
        task = asyncio.create_task(waiter.acquire("r"))
        await until(lambda: subscribers(cluster, channel) == [1, 1, 1])
        killed = pubsub_clients(cluster)
        for server in cluster:
            server.command("CLIENT", "KILL", "TYPE", "pubsub")
        await until(
            lambda: (
                subscribers(cluster, channel) == [1, 1, 1]
                and not pubsub_clients(cluster) & killed
            )
        )
        await lock.release()
        second = await asyncio.wait_for(task, 60)
        await second.release()
