"""Tests of ``redlock_aio.testing._proxy.FaultProxy``: a real redis-server node
behind the proxy, a redis-py (or raw RESP) client in front of it, one fault at a
time; the faults in both modes, direct and pooling (``reconnect_upstream``)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import TYPE_CHECKING, Any

import hiredis
import pytest
import redis.exceptions
from redis.asyncio import Redis

from redlock_aio import AsyncRedlock, LockNotAcquired, Vote
from redlock_aio._resp import encode_command
from redlock_aio.testing._proxy import FaultProxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from redlock_aio.testing import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

#: Generous bound for "must happen" on a loaded 2-core machine.
ANSWER_TIMEOUT = 10.0
#: Short bound for "must not happen": only ever used where silence is expected.
SILENCE_TIMEOUT = 0.3


@pytest.fixture(params=[False, True], ids=["direct", "pooling"])
async def proxy(
    cluster: LocalCluster, request: pytest.FixtureRequest
) -> AsyncIterator[FaultProxy]:
    """A proxy in front of node 0, in each mode."""
    async with FaultProxy(
        "127.0.0.1", cluster[0].port, reconnect_upstream=request.param
    ) as p:
        yield p


@pytest.fixture
async def pooling(cluster: LocalCluster) -> AsyncIterator[FaultProxy]:
    """A pooling proxy in front of node 0."""
    async with FaultProxy("127.0.0.1", cluster[0].port, reconnect_upstream=True) as p:
        yield p


@pytest.fixture
async def client(proxy: FaultProxy) -> AsyncIterator[Redis]:
    """A redis-py client of node 0 through the proxy."""
    c = Redis.from_url(proxy.url)
    try:
        yield c
    finally:
        await c.aclose()


async def answer(coro: Any) -> Any:
    """Await *coro* under the "must happen" bound."""
    return await asyncio.wait_for(coro, ANSWER_TIMEOUT)


async def silent(coro: Any) -> None:
    """Assert that *coro* gets no answer within the "must not happen" bound."""
    with pytest.raises(asyncio.TimeoutError):  # TimeoutError from 3.11 on
        await asyncio.wait_for(coro, SILENCE_TIMEOUT)


class RawClient:
    """One connection, commands pipelined as sent, replies read in order: what a
    pipelining client sees, with no reconnect hidden inside."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.parser = hiredis.Reader()

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        return cls(*await answer(asyncio.open_connection("127.0.0.1", port)))

    def send(self, *commands: tuple[str | int, ...]) -> None:
        self.writer.write(b"".join(encode_command(c) for c in commands))

    async def reply(self) -> Any:
        while (reply := self.parser.gets()) is False:
            data = await answer(self.reader.read(65536))
            if not data:
                raise ConnectionError("closed")
            self.parser.feed(data)
        return reply

    async def call(self, *args: str | int) -> Any:
        self.send(args)
        return await self.reply()

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def eventually(check: Callable[[], bool]) -> None:
    """Poll *check* until it holds, within the "must happen" bound."""
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while not check():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.02)


async def test_pass_through(
    cluster: LocalCluster, proxy: FaultProxy, client: Redis
) -> None:
    assert proxy.mode == "pass"
    assert proxy.url == f"redis://127.0.0.1:{proxy.port}/0"
    assert await answer(client.ping()) is True
    assert await answer(client.set("k", "v")) is True
    assert await answer(client.get("k")) == b"v"
    assert cluster[0].command("GET", "k") == b"v"  # the real node, not a fake
    big = b"x" * 1_000_000  # many chunks each way
    assert await answer(client.set("big", big)) is True
    assert await answer(client.get("big")) == big
    assert await answer(client.delete("k", "big")) == 2
    assert proxy.connections == 1
    assert proxy.total_connections == 1


async def test_latency_delays_without_reordering(
    proxy: FaultProxy, client: Redis
) -> None:
    assert await answer(client.ping())
    proxy.add_latency(0.2)
    assert proxy.mode == "latency"
    t0 = time.monotonic()
    assert await answer(client.ping())
    assert time.monotonic() - t0 >= 0.4 - 0.01  # 0.2 s each way; lower bound only

    proxy.add_latency(0.2, direction="request")
    t0 = time.monotonic()
    async with client.pipeline(transaction=False) as pipe:
        for i in range(200):
            pipe.echo(f"m{i}")
        replies = await answer(pipe.execute())
    assert time.monotonic() - t0 >= 0.2 - 0.01
    assert replies == [f"m{i}".encode() for i in range(200)]

    proxy.add_latency(0.2, direction="reply")
    t0 = time.monotonic()
    assert await answer(client.ping())
    assert time.monotonic() - t0 >= 0.2 - 0.01

    proxy.pass_through()
    assert proxy.mode == "pass"
    assert await answer(client.ping())
    with pytest.raises(ValueError, match="direction"):
        proxy.add_latency(0.1, direction="sideways")
    with pytest.raises(ValueError, match="seconds"):
        proxy.add_latency(-1.0)


async def test_blackhole_times_out_and_heal_lets_new_clients_in(
    cluster: LocalCluster, proxy: FaultProxy, client: Redis
) -> None:
    assert await answer(client.ping())
    proxy.blackhole()
    assert proxy.mode == "blackhole"
    await silent(client.ping())
    # New connections are accepted, and just as silent.
    late = Redis.from_url(proxy.url)
    try:
        await silent(late.ping())
    finally:
        await late.aclose()
    assert proxy.total_connections >= 2
    # Only this path is partitioned: a direct client still reaches the node.
    direct = Redis.from_url(cluster[0].url)
    try:
        assert await answer(direct.ping())
    finally:
        await direct.aclose()

    proxy.heal()
    assert proxy.mode == "pass"
    fresh = Redis.from_url(proxy.url)
    try:
        assert await answer(fresh.ping())
    finally:
        await fresh.aclose()
    # The old client's broken connection was reset; it reconnects.
    assert await answer(client.ping())


async def test_blackhole_drops_delayed_chunks_and_hides_the_node_closing(
    cluster: LocalCluster, proxy: FaultProxy, client: Redis
) -> None:
    assert await answer(client.client_setname("victim"))
    proxy.add_latency(0.5)
    ping = asyncio.ensure_future(client.ping())
    await asyncio.sleep(0.1)  # the PING is being delayed inside the proxy
    proxy.blackhole()
    await silent(asyncio.shield(ping))
    # The node drops the connection: behind the partition the client hears nothing.
    cluster[0].command("CLIENT", "KILL", "TYPE", "normal")
    await silent(asyncio.shield(ping))
    ping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await ping
    proxy.heal()
    assert await answer(client.ping())


async def test_reset_raises_connection_error(proxy: FaultProxy, client: Redis) -> None:
    assert await answer(client.ping())
    assert proxy.connections == 1
    proxy.reset()
    assert proxy.mode == "reset"
    with pytest.raises(redis.exceptions.ConnectionError):
        await answer(client.ping())  # redis-py retries, and is reset each time
    await eventually(lambda: proxy.connections == 0)
    proxy.heal()
    assert await answer(client.ping())


async def test_drop_replies_applies_the_write_but_never_answers(
    cluster: LocalCluster, proxy: FaultProxy, client: Redis
) -> None:
    assert await answer(client.ping())
    proxy.drop_replies_after(0)
    assert proxy.mode == "drop_replies"
    await silent(client.set("k", "v"))
    await eventually(lambda: cluster[0].command("GET", "k") == b"v")
    cluster[0].command("DEL", "k")
    proxy.heal()
    assert await answer(client.ping())


async def test_drop_replies_after_a_grace_period(
    cluster: LocalCluster, proxy: FaultProxy, client: Redis
) -> None:
    proxy.drop_replies_after(ANSWER_TIMEOUT)
    assert await answer(client.set("k", "v")) is True  # within the grace period
    proxy.drop_replies_after(0)
    await silent(client.delete("k"))
    await eventually(lambda: cluster[0].command("EXISTS", "k") == 0)


async def test_target_down_is_a_reset_unless_blackholed() -> None:
    # A port bound but not listening: connections to it are refused.
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        async with FaultProxy("127.0.0.1", closed_port.getsockname()[1]) as dead:
            c = Redis.from_url(dead.url)
            try:
                with pytest.raises(redis.exceptions.ConnectionError):
                    await answer(c.ping())
                # Behind a partition the client cannot tell the node is down.
                dead.blackhole()
                await silent(c.ping())
            finally:
                await c.aclose()


@pytest.mark.parametrize(
    "host", ["10.0.0.1", "0.0.0.0", "::", "192.168.1.1", "example.com", "", "8.8.8.8"]
)
def test_refuses_non_loopback_addresses(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy(host, 6379)
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("127.0.0.1", 6379, host=host)


def test_accepts_loopback_addresses_without_io() -> None:
    for host in ("127.0.0.1", "127.5.6.7", "::1", "localhost"):
        proxy = FaultProxy(host, 6379, host=host)
        assert not proxy.running
        with pytest.raises(RuntimeError, match="start"):
            _ = proxy.port
    with pytest.raises(ValueError, match="target_port"):
        FaultProxy("127.0.0.1", 0)
    with pytest.raises(TypeError):
        FaultProxy("127.0.0.1", "6379")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reconnect_timeout"):
        FaultProxy("127.0.0.1", 6379, reconnect_upstream=True, reconnect_timeout=-1)


async def test_aclose_closes_connections_and_leaves_no_task(
    cluster: LocalCluster,
) -> None:
    proxy = await FaultProxy("127.0.0.1", cluster[0].port).start()
    clients = [Redis.from_url(proxy.url) for _ in range(2)]
    raw_reader, raw_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        for c in clients:
            assert await answer(c.ping())
        proxy.add_latency(0.5)
        pending = asyncio.ensure_future(clients[0].ping())  # delayed in the proxy
        await eventually(lambda: proxy.connections == 3)
        await proxy.aclose()
        assert proxy.connections == 0
        assert not proxy.running
        with pytest.raises(redis.exceptions.ConnectionError):
            await answer(pending)  # reset by aclose
        # An idle connection is reset too. (Not checked through clients[1]: its
        # pool hands the reset connection out again (redis-py looks for EOF and
        # buffered data, not for a reset), and the write to a lost transport
        # raises AttributeError on CPython 3.12+ (gh-136234), RuntimeError on
        # uvloop, ConnectionError only on 3.11's asyncio.)
        with pytest.raises(ConnectionResetError):
            await answer(raw_reader.read(1))
        assert asyncio.all_tasks() == {asyncio.current_task()}
        clients.append(Redis.from_url(proxy.url))  # no pooled connection
        with pytest.raises(
            redis.exceptions.ConnectionError, match=r"refused|Connect call failed"
        ):
            await answer(clients[-1].ping())  # refused: nothing listens
        await proxy.aclose()  # idempotent
        # It listens again on the same port.
        port = proxy.port
        await proxy.start()
        assert proxy.port == port
        proxy.heal()
        clients.append(Redis.from_url(proxy.url))
        assert await answer(clients[-1].ping())
    finally:
        raw_writer.close()
        await proxy.aclose()
        for c in clients:
            await c.aclose()
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_connection_counts(proxy: FaultProxy) -> None:
    clients = [Redis.from_url(proxy.url) for _ in range(2)]
    for c in clients:
        assert await answer(c.ping())
    assert proxy.connections == 2
    assert proxy.total_connections == 2
    for c in clients:
        await c.aclose()
    await eventually(lambda: proxy.connections == 0)
    assert proxy.total_connections == 2


async def test_redlock_with_one_node_partitioned(cluster: LocalCluster) -> None:
    async with (
        FaultProxy("127.0.0.1", cluster[0].port) as proxy,
        # No restart quarantine: the nodes of the suite may be fresh.
        AsyncRedlock(
            [proxy.url, cluster.urls[1], cluster.urls[2]],
            ttl=5,
            node_timeout=0.3,
            restart_quarantine=0,
        ) as rl,
    ):
        proxy.blackhole()
        # A majority still answers: acquire succeeds without node 0.
        lock = await answer(rl.acquire("r", blocking=False))
        assert [s.command("GET", "r") for s in cluster] == [
            None,
            lock.token,
            lock.token,
        ]
        await answer(lock.release())
        assert [s.command("GET", "r") for s in cluster] == [None, None, None]

        # Node 1 is held by someone else: only node 0 could make the quorum,
        # and it never answers, so it votes against.
        cluster[1].command("SET", "r", "other", "PX", 60000)
        try:
            with pytest.raises(LockNotAcquired) as exc:
                await answer(rl.acquire("r", blocking=False))
            votes = [o.vote for o in exc.value.outcomes]
            # A timeout, or an error when an earlier request's timeout on the
            # same connection gave it up first: a vote against either way.
            assert votes[0] in (Vote.TIMEOUT, Vote.ERROR)
            assert votes[1:] == [Vote.NO, Vote.YES]
            assert [s.command("GET", "r") for s in cluster] == [None, b"other", None]
        finally:
            cluster[1].command("DEL", "r")

        # Healed, node 0 takes part again.
        proxy.heal()
        lock = await answer(rl.acquire("r"))
        await eventually(lambda: cluster[0].command("GET", "r") == lock.token)
        await answer(lock.release())
    assert [s.command("GET", "r") for s in cluster] == [None, None, None]


# -- pooling: the client's connection outlives the node's ------------------- #


def run_id(info: bytes) -> bytes:
    [line] = [x for x in info.splitlines() if x.startswith(b"run_id:")]
    return line


async def test_pooling_keeps_a_pipelining_client_in_step_across_a_restart(
    cluster: LocalCluster, pooling: FaultProxy
) -> None:
    c = await RawClient.connect(pooling.port)
    try:
        assert await c.call("SET", "k", "v") == b"OK"
        before = run_id(await c.call("INFO", "server"))
        # Pipelined: the SET is answered, the BLPOP blocks, the PING waits.
        c.send(("SET", "k2", "v"), ("BLPOP", "q", 0), ("PING",))
        assert await c.reply() == b"OK"
        await asyncio.to_thread(cluster[0].restart)
        for _ in range(2):  # the BLPOP and the PING, in order
            error = await c.reply()
            assert isinstance(error, hiredis.ReplyError)
            assert "upstream connection lost" in str(error)
        # The same socket reaches the new node: empty, another run.
        assert await c.call("GET", "k") is None
        assert run_id(await c.call("INFO", "server")) != before
        assert await c.call("PING") == b"PONG"
        assert not c.reader.at_eof()
        assert pooling.total_connections == 1
        assert pooling.connections == 1
    finally:
        await c.aclose()


async def test_pooling_waits_for_a_node_that_comes_back(
    cluster: LocalCluster, pooling: FaultProxy
) -> None:
    client = Redis.from_url(pooling.url)
    try:
        assert await answer(client.set("k", "v"))
        cluster[0].kill()
        get = asyncio.ensure_future(client.get("k"))  # waits for a connection
        await silent(asyncio.shield(get))
        await asyncio.to_thread(cluster[0].restart)
        assert await answer(get) is None  # the node came back empty
        assert pooling.total_connections == 1
    finally:
        await client.aclose()


async def test_pooling_answers_an_error_while_the_node_stays_down(
    cluster: LocalCluster,
) -> None:
    async with FaultProxy(
        "127.0.0.1", cluster[0].port, reconnect_upstream=True, reconnect_timeout=0.1
    ) as proxy:
        c = await RawClient.connect(proxy.port)
        try:
            assert await c.call("PING") == b"PONG"
            cluster[0].kill()
            error = await c.call("PING")
            assert isinstance(error, hiredis.ReplyError)
            assert "upstream" in str(error)
            await asyncio.to_thread(cluster[0].restart)
            assert await c.call("PING") == b"PONG"
            assert proxy.total_connections == 1
        finally:
            await c.aclose()


async def test_pooling_hides_client_kill_and_sends_the_setup_again(
    cluster: LocalCluster, pooling: FaultProxy
) -> None:
    client = Redis.from_url(
        pooling.url.replace("/0", "/1"),
        client_name="pooled",
        single_connection_client=True,
    )
    try:
        assert await answer(client.set("k", "v"))
        first = await answer(client.client_id())
        cluster[0].command("CLIENT", "KILL", "TYPE", "normal")
        assert await answer(client.get("k")) == b"v"  # still in db 1
        assert await answer(client.client_getname()) == "pooled"
        assert await answer(client.client_id()) != first
        assert pooling.total_connections == 1
    finally:
        with contextlib.suppress(redis.exceptions.RedisError):
            await client.delete("k")
        await client.aclose()


async def test_pooling_disconnects_a_subscriber(
    cluster: LocalCluster, pooling: FaultProxy
) -> None:
    c = await RawClient.connect(pooling.port)
    try:
        assert (await c.call("SUBSCRIBE", "ch"))[0] == b"subscribe"
        cluster[0].command("CLIENT", "KILL", "TYPE", "pubsub")
        with pytest.raises(ConnectionError):
            await c.reply()  # its subscription is gone: the proxy closed it
    finally:
        await c.aclose()
    await eventually(lambda: pooling.connections == 0)


# -- closing: bounded, and nothing left running ----------------------------- #


def link_tasks(proxy: FaultProxy) -> list[asyncio.Task[None]]:
    return [t for t in proxy._tasks if t.get_name().endswith(":link")]


@pytest.mark.timeout(30)
async def test_aclose_right_after_a_link_ended(proxy: FaultProxy) -> None:
    # A link whose task has just ended, its done callback not run yet: on 3.12
    # gather() of finished tasks does not yield, and a loop waiting for that
    # callback would spin for ever.
    c = await RawClient.connect(proxy.port)
    assert await c.call("PING") == b"PONG"
    [link] = link_tasks(proxy)
    await c.aclose()
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while not link.done():
        assert time.monotonic() < deadline
        await asyncio.sleep(0)
    await answer(proxy.aclose())
    assert asyncio.all_tasks() == {asyncio.current_task()}


@pytest.mark.parametrize("fault", ["pass", "latency", "blackhole", "drop_replies"])
async def test_aclose_is_bounded_and_ends_every_task(
    proxy: FaultProxy, fault: str
) -> None:
    idle, busy, gone = [await RawClient.connect(proxy.port) for _ in range(3)]
    try:
        for c in (idle, busy, gone):
            assert await c.call("PING") == b"PONG"
        faults: dict[str, Callable[[], None]] = {
            "pass": proxy.pass_through,
            "latency": lambda: proxy.add_latency(5),
            "blackhole": proxy.blackhole,
            "drop_replies": lambda: proxy.drop_replies_after(0),
        }
        faults[fault]()
        busy.send(("BLPOP", "q", 0))  # in flight (or held) when the proxy closes
        await gone.aclose()
        await asyncio.sleep(0.1)
        await answer(proxy.aclose())
        assert proxy.connections == 0
        assert all(t.done() for t in proxy._tasks)
        assert asyncio.all_tasks() == {asyncio.current_task()}
        with pytest.raises(OSError):  # noqa: PT011 - reset or closed, either
            await busy.reply()
    finally:
        for c in (idle, busy, gone):
            await c.aclose()
