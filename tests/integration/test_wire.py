"""MuxNode, the multiplexed transport, against real redis-server processes:
command semantics, pipelining over one connection, NOSCRIPT, node failures,
AUTH and SELECT, unix sockets, TLS (through a local TLS proxy), cancellation, a
hung node, aclose, and the whole AsyncRedlock flow over MuxNodes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest
import redis.exceptions

from redlock_aio import (
    AsyncRedlock,
    ConfigurationError,
    Lock,
    MuxNode,
    Node,
    _commands,
    _mux,
    _scripts,
)
from redlock_aio._resp import encode_command
from redlock_aio._url import describe_url
from redlock_aio.testing import HungNode, LocalCluster, RedisServer, free_port

from .helpers import extend, extend_many, lock_keys, release, set_nx

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration

#: Generous bound for "fails fast" on a loaded 2-core machine.
FAST = 5.0


@pytest.fixture
async def node(cluster: LocalCluster) -> AsyncIterator[MuxNode]:
    n = MuxNode.from_url(cluster.urls[0])
    try:
        yield n
    finally:
        await n.aclose()


def pttl(server: RedisServer, key: bytes) -> int:
    reply = server.command("PTTL", key)
    assert isinstance(reply, int)
    return reply


def client_count(server: RedisServer) -> int:
    """Clients connected to the server, not counting the probe itself."""
    info = server.command("INFO", "clients")
    assert isinstance(info, bytes)
    for line in info.splitlines():
        if line.startswith(b"connected_clients:"):
            return int(line.split(b":")[1]) - 1
    raise AssertionError(info)


def other_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def eventually(check: Callable[[], bool], timeout: float = FAST) -> None:
    """Wait until ``check()`` is true (server-side state settles asynchronously)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# -- construction -------------------------------------------------------------------


def test_encode_command() -> None:
    assert encode_command((b"SET", "k\u00e9", 12, 1.5, bytearray(b"x"))) == (
        b"*5\r\n$3\r\nSET\r\n$3\r\nk\xc3\xa9\r\n$2\r\n12\r\n$3\r\n1.5\r\n$1\r\nx\r\n"
    )
    with pytest.raises(TypeError):
        encode_command((b"SET", None))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode_command((b"SET", True))


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6390/0",
        "redis://:s3cret@localhost:6390/2",
        "redis://user:s3cret@127.0.0.1/0",
        "redis://127.0.0.1:6390?db=4",
        "unix:///tmp/redis.sock?db=1",
        "rediss://127.0.0.1:6390/0?ssl_cert_reqs=none",
    ],
)
def test_name_and_identity_match_describe_url(url: str) -> None:
    n = MuxNode.from_url(url)
    assert (n.name, n.identity) == describe_url(url)
    assert isinstance(n, Node)
    assert "s3cret" not in repr(n)
    assert "s3cret" not in n.name


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1/0", "scheme"),
        ("redis://:s3cret@127.0.0.1/0?frobnicate=1", "unsupported parameter"),
        ("redis://:s3cret@127.0.0.1/0?ssl_cert_reqs=none", "rediss://"),
        ("rediss://:s3cret@127.0.0.1/0?ssl_ca_certs=/no/such/ca.pem", "certificates"),
        ("rediss://:s3cret@127.0.0.1/0?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("redis://user@127.0.0.1/0", "password"),
    ],
)
def test_from_url_refuses_what_it_cannot_do(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        MuxNode.from_url(url)
    assert "s3cret" not in str(info.value)


# -- commands -------------------------------------------------------------------------


async def test_set_nx_extend_release(cluster: LocalCluster, node: MuxNode) -> None:
    server = cluster[0]
    assert await set_nx(node, b"k", b"tok", 5000) is True
    assert server.command("GET", "k") == b"tok"
    assert 4000 < pttl(server, b"k") <= 5000
    assert await set_nx(node, b"k", b"other", 5000) is False  # NX: taken
    assert server.command("GET", "k") == b"tok"

    assert await extend(node, b"k", b"tok", 20000) is True
    assert 15000 < pttl(server, b"k") <= 20000
    assert await extend(node, b"k", b"other", 60000) is False  # not ours
    assert pttl(server, b"k") <= 20000
    assert await extend(node, b"gone", b"tok", 60000) is False  # never revived
    assert server.command("EXISTS", "gone") == 0

    assert await release(node, b"k", b"other") is False  # not ours
    assert server.command("GET", "k") == b"tok"
    assert await release(node, b"k", b"tok") is True
    assert server.command("GET", "k") is None
    assert await release(node, b"k", b"tok") is False  # already gone
    assert node.connects == 1


async def test_execute_and_error_replies(cluster: LocalCluster, node: MuxNode) -> None:
    assert await node.execute("PING") == b"PONG"
    assert await node.execute("ECHO", b"\x00\r\n") == b"\x00\r\n"
    config = await node.execute("CONFIG", "GET", "appendonly")
    assert config == [b"appendonly", b"no"]
    info = await node.execute("INFO", "server")
    assert isinstance(info, bytes)
    assert b"redis_version" in info

    assert await node.execute("RPUSH", "list", "x") == 1
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        await node.execute("GET", "list")
    with pytest.raises(redis.exceptions.NoScriptError):
        await node.execute("EVALSHA", "0" * 40, 0)
    with pytest.raises(redis.exceptions.ResponseError, match="unknown command"):
        await node.execute("NO-SUCH-COMMAND")
    # An error reply answers its own request only: the FIFO stays in step.
    assert await node.execute("ECHO", "after") == b"after"
    assert await node.execute("DEL", "list") == 1
    assert node.connects == 1


async def test_pipelined_requests_share_one_connection(
    cluster: LocalCluster, node: MuxNode
) -> None:
    n = 500
    # Concurrent first requests share one connect.
    pings = await asyncio.gather(*(node.execute("PING") for _ in range(20)))
    assert pings == [b"PONG"] * 20
    client_id = await node.execute("CLIENT", "ID")

    # Replies come back in the order the requests were written.
    counts = await asyncio.gather(*(node.execute("INCR", "counter") for _ in range(n)))
    assert counts == list(range(1, n + 1))

    keys = [b"key:%d" % i for i in range(n)]
    tokens = [os.urandom(20) for _ in range(n)]
    pairs = list(zip(keys, tokens, strict=True))
    set_ = await asyncio.gather(*(set_nx(node, k, t, 10000) for k, t in pairs))
    assert set_ == [True] * n
    assert await asyncio.gather(*(node.execute("GET", k) for k in keys)) == tokens
    extended = await asyncio.gather(*(extend(node, k, t, 20000) for k, t in pairs))
    assert extended == [True] * n
    released = await asyncio.gather(*(release(node, k, t) for k, t in pairs))
    assert released == [True] * n

    assert await node.execute("CLIENT", "ID") == client_id
    assert node.connects == 1
    # One connection, and the renewals' own (the extends above).
    assert client_count(cluster[0]) == 2
    assert await node.execute("DEL", "counter") == 1


async def test_noscript_after_script_flush_recovers(
    cluster: LocalCluster, node: MuxNode
) -> None:
    assert await set_nx(node, b"k", b"tok", 5000)
    assert await extend(node, b"k", b"tok", 6000)
    cluster[0].command("SCRIPT", "FLUSH")
    assert await extend(node, b"k", b"tok", 7000)
    cluster[0].command("SCRIPT", "FLUSH")
    assert await release(node, b"k", b"tok")
    assert cluster[0].command("EXISTS", "k") == 0
    assert node.connects == 1


async def test_the_eviction_policy_is_asked_once(
    cluster: LocalCluster, node: MuxNode, caplog: pytest.LogCaptureFixture
) -> None:
    server = cluster[0]
    server.command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    try:
        with caplog.at_level(logging.WARNING, logger="redlock_aio"):
            assert await node.execute("PING") == b"PONG"
        assert node.facts.eviction_checked
        assert [r for r in caplog.records if "allkeys-lru" in r.getMessage()]
        caplog.clear()
        server.restart()
        with pytest.raises(redis.exceptions.ConnectionError):
            await node.execute("PING")  # the old connection is gone
        with caplog.at_level(logging.WARNING, logger="redlock_aio"):
            assert await node.execute("PING") == b"PONG"
        # The eviction policy is asked only once (and is the default again).
        messages = [r.getMessage() for r in caplog.records]
        assert not any("maxmemory-policy" in m for m in messages)
    finally:
        if server.running:
            server.command("CONFIG", "SET", "maxmemory-policy", "noeviction")


async def test_nothing_runs_after_a_failed_auth(redis_binary: str) -> None:
    """A wrong password for an ACL user, on a server whose default user needs
    none: a SET pipelined behind the failed AUTH would run as the default user
    and leave a key for its whole TTL. Nothing is sent before AUTH succeeded,
    and a failed AUTH closes the connection."""
    with RedisServer(binary=redis_binary) as server:
        server.command("ACL", "SETUSER", "locker", "on", ">right", "~*", "+@all")
        wrong = MuxNode.from_url(f"redis://locker:wrong@127.0.0.1:{server.port}/0")
        try:
            for _ in range(3):
                with pytest.raises(redis.exceptions.AuthenticationError):
                    await set_nx(wrong, b"k", b"tok", 60_000)
            assert server.command("EXISTS", "k") == 0
            assert server.command("SCRIPT", "EXISTS", _scripts.RELEASE_SHA) == [0]
        finally:
            await wrong.aclose()


# -- failures ---------------------------------------------------------------------------


async def test_killed_node_fails_fast_and_recovers_after_restart(
    cluster: LocalCluster, node: MuxNode
) -> None:
    assert await set_nx(node, b"k", b"tok", 5000)
    cluster[0].kill()
    t0 = time.monotonic()
    # The connection is gone (or is found gone on this request), then the
    # reconnect is refused: both fail at once.
    for _ in range(2):
        with pytest.raises(redis.exceptions.ConnectionError) as info:
            await release(node, b"k", b"tok")
        assert node.name in str(info.value)
    assert time.monotonic() - t0 < FAST

    cluster[0].restart()  # empty, scripts gone: release reloads its script
    assert await set_nx(node, b"k", b"tok", 5000)
    assert await release(node, b"k", b"tok")
    assert await extend(node, b"k", b"tok", 5000) is False
    assert node.connects == 2


async def test_refused_connect_fails_fast() -> None:
    port = free_port()
    n = MuxNode.from_url(f"redis://:s3cret@127.0.0.1:{port}/0")
    try:
        t0 = time.monotonic()
        with pytest.raises(redis.exceptions.ConnectionError) as info:
            await set_nx(n, b"k", b"tok", 1000)
        assert time.monotonic() - t0 < FAST
        assert f"127.0.0.1:{port}" in str(info.value)
        assert "s3cret" not in str(info.value)
        # Every concurrent waiter of the failed connect gets the error.
        results = await asyncio.gather(
            *(n.execute("PING") for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, redis.exceptions.ConnectionError) for r in results)
    finally:
        await n.aclose()


async def test_password_protected_node(redis_binary: str) -> None:
    with RedisServer(binary=redis_binary, password="s3cret") as server:
        good = MuxNode.from_url(server.url)
        anonymous = MuxNode.from_url(f"redis://127.0.0.1:{server.port}/0")
        wrong = MuxNode.from_url(f"redis://:wr0ng@127.0.0.1:{server.port}/0")
        acl = MuxNode.from_url(f"redis://default:s3cret@127.0.0.1:{server.port}/3")
        try:
            assert "s3cret" not in repr(good)
            assert await set_nx(good, b"k", b"tok", 5000)
            assert await release(good, b"k", b"tok")
            assert await set_nx(acl, b"k", b"tok", 5000)  # AUTH user pass, SELECT 3
            assert await release(acl, b"k", b"tok")

            with pytest.raises(redis.exceptions.AuthenticationError) as info:
                await set_nx(anonymous, b"k", b"tok", 5000)
            assert "Authentication required" in str(info.value)

            with pytest.raises(redis.exceptions.AuthenticationError) as info:
                await set_nx(wrong, b"k", b"tok", 5000)
            message = str(info.value)
            assert "authentication to" in message
            assert f"127.0.0.1:{server.port}" in message
            assert "wr0ng" not in message
            assert "s3cret" not in message
            # The failed handshake closed that connection; the next request
            # tries again, and fails the same way.
            with pytest.raises(redis.exceptions.AuthenticationError):
                await wrong.execute("PING")
            assert wrong.connects == 2
            assert server.command("DBSIZE") == 0
        finally:
            for n in (good, anonymous, wrong, acl):
                await n.aclose()


async def test_db_selection(cluster: LocalCluster) -> None:
    base = cluster.urls[0].rsplit("/", 1)[0]
    # The db in the path, as ?db=, or both when they agree (they must).
    for url in (f"{base}/3", f"{base}?db=3", f"{base}/3?db=3"):
        n = MuxNode.from_url(url)
        try:
            assert await set_nx(n, b"k", b"tok", 5000)
            assert cluster[0].command("EXISTS", "k") == 0  # not in db 0
            keyspace = cluster[0].command("INFO", "keyspace")
            assert isinstance(keyspace, bytes)
            assert b"db3:keys=1," in keyspace
            assert await n.execute("GET", "k") == b"tok"
            assert await release(n, b"k", b"tok")
        finally:
            await n.aclose()


@pytest.fixture
def unix_server(redis_binary: str) -> Iterator[tuple[RedisServer, str]]:
    # A short directory: a unix socket path is limited to ~100 bytes.
    workdir = tempfile.mkdtemp(prefix="rl-", dir="/tmp")
    path = os.path.join(workdir, "redis.sock")
    try:
        with RedisServer(
            binary=redis_binary,
            extra_args=["--unixsocket", path, "--unixsocketperm", "700"],
        ) as server:
            yield server, path
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def test_unix_socket(unix_server: tuple[RedisServer, str]) -> None:
    server, path = unix_server
    n = MuxNode.from_url(f"unix://{path}?db=2")
    try:
        assert n.name == f"unix:{path}"
        assert await set_nx(n, b"k", b"tok", 5000)
        keyspace = server.command("INFO", "keyspace")
        assert isinstance(keyspace, bytes)
        assert b"db2:keys=1," in keyspace
        assert await extend(n, b"k", b"tok", 5000)
        assert await release(n, b"k", b"tok")
    finally:
        await n.aclose()


# -- TLS, through a local TLS-terminating proxy in front of a plain node ---------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@contextlib.asynccontextmanager
async def tls_proxy(target_port: int, cert: Path, key: Path) -> AsyncIterator[int]:
    """A TLS listener on loopback that forwards each connection to the node."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    handlers: set[asyncio.Task[object]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def handle(
        client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            node_r, node_w = await asyncio.open_connection("127.0.0.1", target_port)
            await asyncio.gather(pipe(client_r, node_w), pipe(node_r, client_w))
        finally:
            client_w.close()
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        await eventually(lambda: not handlers)


async def test_tls(cluster: LocalCluster, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    async with tls_proxy(cluster[0].port, cert, key) as port:
        verified = MuxNode.from_url(
            f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={quote(str(cert))}"
        )
        unverified = MuxNode.from_url(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none")
        untrusted = MuxNode.from_url(f"rediss://127.0.0.1:{port}/0")
        try:
            assert await set_nx(verified, b"k", b"tok", 5000)
            assert await extend(verified, b"k", b"tok", 6000)
            assert await release(unverified, b"k", b"other") is False
            assert await release(verified, b"k", b"tok")
            with pytest.raises(
                redis.exceptions.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"
            ):
                await untrusted.execute("PING")
        finally:
            for n in (verified, unverified, untrusted):
                await n.aclose()


# -- cancellation, hung nodes, aclose ---------------------------------------------------


async def test_timed_out_request_on_a_stuck_node_aborts_and_recovers(
    cluster: LocalCluster, node: MuxNode
) -> None:
    server = cluster[0]
    assert await node.execute("PING") == b"PONG"
    server.pause()
    try:
        first = node.submit(_commands.set_nx(b"k", b"tok", 5000), timeout=0.2)
        second = asyncio.create_task(node.execute("PING"))
        # Nothing comes back after `first` was written: at its timeout the node
        # is stuck, the connection is given up and every request on it fails.
        with pytest.raises(TimeoutError, match="no reply within 200 ms"):
            await first
        with pytest.raises(redis.exceptions.ConnectionError, match="no reply within"):
            await second
    finally:
        server.resume()
    # The next request reconnects; replies are in step.
    assert await node.execute("ECHO", "next") == b"next"
    assert await node.execute("PING") == b"PONG"
    assert node.connects == 2
    await eventually(lambda: client_count(server) == 1)
    assert not other_tasks()
    server.command("DEL", "k")  # the cancelled SET may or may not have landed


async def test_a_release_waiting_for_room_runs_behind_the_requests_of_a_retired_connection(
    cluster: LocalCluster, node: MuxNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a release waiting for room in the window when its node
    stalled failed with the retired connection without being written, while
    the SET ahead of it, written there, still ran when the node woke: its key
    stayed until the TTL. It is now written on the retired connection too,
    behind the SET (a release may run twice: it deletes only its own token)."""
    server = cluster[0]
    assert await node.execute("PING") == b"PONG"  # connected, nothing in flight
    monkeypatch.setattr(_mux, "WINDOW", 2)
    server.pause()
    try:
        requests = [
            node.submit(_commands.set_nx(b"k1", b"t1", 60_000), timeout=0.2),
            node.submit(_commands.set_nx(b"k2", b"t2", 60_000), timeout=0.2),
            # The window is full: this one waits for room.
            node.submit(_commands.release(b"k1", b"t1", notify=False), timeout=0.2),
        ]
        results = await asyncio.gather(*requests, return_exceptions=True)
        assert all(isinstance(r, Exception) for r in results), results
    finally:
        server.resume()
    # The retired connection closes once the node has answered all that was
    # written on it: by then both SETs (and the release, if written) have run.
    await eventually(lambda: client_count(server) == 0)
    assert server.command("EXISTS", "k2") == 1  # the SETs ran after the stall
    assert server.command("EXISTS", "k1") == 0  # and the release behind them
    server.command("DEL", "k2")


async def test_reply_racing_cancellation_keeps_the_connection(
    cluster: LocalCluster, node: MuxNode
) -> None:
    """A request cancelled after its reply arrived (but before its task ran)
    took its reply from the FIFO: the connection stays."""
    assert await node.execute("PING") == b"PONG"
    task = asyncio.create_task(node.execute("PING"))
    await asyncio.sleep(0)  # written
    deadline = time.monotonic() + FAST
    while True:  # until the reply is in: the task's wake-up is then scheduled
        await asyncio.sleep(0)
        conn = node._conn
        assert conn is not None
        if not conn._waiters:
            break
        assert time.monotonic() < deadline
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert node._conn is conn
    assert await node.execute("ECHO", "x") == b"x"
    assert node.connects == 1


@pytest.mark.parametrize("password", [None, "s3cret"])
async def test_hung_node_request_ends_only_by_cancellation(
    password: str | None,
) -> None:
    with HungNode() as hung:
        auth = f":{password}@" if password else ""
        n = MuxNode.from_url(f"redis://{auth}127.0.0.1:{hung.port}/0")
        try:
            task = asyncio.create_task(set_nx(n, b"k", b"tok", 1000))
            done, _ = await asyncio.wait((task,), timeout=0.5)
            assert not done
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert n.connects == 1
            # And again, on a fresh connection.
            ping = asyncio.create_task(n.execute("PING"))
            finished, _ = await asyncio.wait((ping,), timeout=0.2)
            assert not finished
            ping.cancel()
            with pytest.raises(asyncio.CancelledError):
                await ping
            assert n.connects == 2
        finally:
            await n.aclose()
        assert not other_tasks()


async def test_aclose_fails_in_flight_requests_and_is_final(
    cluster: LocalCluster,
) -> None:
    server = cluster[0]
    n = MuxNode.from_url(server.url)
    assert await n.execute("PING") == b"PONG"
    assert client_count(server) == 1
    server.pause()
    try:
        task = asyncio.create_task(n.execute("PING"))
        await asyncio.sleep(0.05)
        await n.aclose()
        with pytest.raises(redis.exceptions.ConnectionError, match="closed"):
            await task
    finally:
        server.resume()
    await n.aclose()  # idempotent
    with pytest.raises(redis.exceptions.ConnectionError, match="closed"):
        await n.execute("PING")
    await eventually(lambda: client_count(server) == 0)
    assert not other_tasks()


async def test_connect_is_shared_and_outlives_a_cancelled_waiter() -> None:
    """A TLS handshake with a hung node never completes: the connect stays
    pending. Waiters share it; cancelling one leaves it to the others; aclose
    ends it, and its waiters get a ConnectionError, not a cancellation."""
    with HungNode() as hung:
        n = MuxNode.from_url(f"rediss://127.0.0.1:{hung.port}/0?ssl_cert_reqs=none")
        first = asyncio.create_task(n.execute("PING"))
        second = asyncio.create_task(n.execute("PING"))
        finished, _ = await asyncio.wait((first, second), timeout=0.3)
        assert not finished
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        finished, _ = await asyncio.wait((second,), timeout=0.1)
        assert not finished
        await n.aclose()
        with pytest.raises(redis.exceptions.ConnectionError, match="closed"):
            await second
        assert n.connects == 0
    assert not other_tasks()


# -- the algorithm over MuxNodes ----------------------------------------------------------


async def settle(lock: Lock) -> None:
    """Wait for the lock's requests still in flight (the quorum decides first)."""
    await lock._settled()


def keys(cluster: LocalCluster, key: bytes) -> list[object]:
    return [s.command("GET", key) if s.running else None for s in cluster]


async def test_redlock_over_mux_nodes(cluster: LocalCluster) -> None:
    nodes = [MuxNode.from_url(u) for u in cluster.urls]
    async with AsyncRedlock(
        nodes,
        ttl=5,
        node_timeout=1.0,
        retry_delay=0.01,
        # Nodes the suite started: no lock could predate them.
        restart_quarantine=0,
    ) as rl:
        lock = await rl.acquire("orders:42")
        await settle(lock)
        assert keys(cluster, b"orders:42") == [lock.token] * 3
        assert all(0 < pttl(s, b"orders:42") <= 5000 for s in cluster)
        assert 5.0 < await lock.extend(8.0) <= 8.0
        await settle(lock)
        assert all(pttl(s, b"orders:42") > 5000 for s in cluster)
        with pytest.raises(Exception, match="could not acquire"):
            await rl.acquire("orders:42", blocking=False)
        await lock.release()
        assert keys(cluster, b"orders:42") == [None] * 3

        async with rl.lock("orders:43") as held:
            await settle(held)
            assert keys(cluster, b"orders:43") == [held.token] * 3
        assert keys(cluster, b"orders:43") == [None] * 3

        # A dead node is a vote against; a majority still grants the lock.
        cluster[2].kill()
        lock = await rl.acquire("orders:44")
        await lock.release()
        assert keys(cluster, b"orders:44") == [None] * 3
    # AsyncRedlock.aclose closed the nodes; closing again is harmless.
    for n in nodes:
        await n.aclose()
    assert not other_tasks()


@pytest.mark.parametrize("kind", ["mux", "redis-py"])
async def test_extend_many_in_one_request(cluster: LocalCluster, kind: str) -> None:
    from redlock_aio import RedisNode

    node: MuxNode | RedisNode = (
        MuxNode.from_url(cluster.urls[0])
        if kind == "mux"
        else RedisNode.from_url(cluster.urls[0])
    )
    try:
        for i in range(3):
            assert await set_nx(node, b"k%d" % i, b"t%d" % i, 5000)
        items = [(b"k0", b"t0", 60000), (b"k1", b"wrong", 60000), (b"k9", b"t9", 1)]
        assert await extend_many(node, items) == [True, False, False]
        assert int(cluster[0].command("PTTL", "k0")) > 5000  # type: ignore[call-overload]
        cluster[0].command("SCRIPT", "FLUSH")
        assert await extend_many(node, items) == [True, False, False]
    finally:
        cluster[0].command("DEL", "k0", "k1", "k2")
        await node.aclose()


# -- submit: written at once, in order, no task ------------------------------------


async def test_requests_made_before_the_connection_is_up_keep_their_order(
    cluster: LocalCluster, node: MuxNode
) -> None:
    """Requests submitted while the node connects are held and written, in
    order, once it is up: a release submitted after a SET is answered after
    it, so the key is set, then deleted."""
    tasks_before = other_tasks()
    first = node.submit(_commands.set_nx(b"k", b"tok", 5000), timeout=FAST)
    second = node.submit(
        _commands.release(b"k", b"tok", notify=False), timeout=FAST, after=first
    )
    assert not first.done()
    assert await first == b"OK"
    assert await second == 1
    assert cluster[0].command("EXISTS", "k") == 0
    assert node.connects == 1
    # No task per request: only the connect's, which is over.
    assert other_tasks() <= tasks_before


async def test_on_done_is_called_in_the_turn_the_reply_arrives(
    node: MuxNode,
) -> None:
    assert await node.execute("PING") == b"PONG"
    seen: list[tuple[object, bool]] = []
    fut = node.submit(
        _commands.set_nx(b"k", b"tok", 5000),
        timeout=FAST,
        on_done=lambda f: seen.append((f.result(), f.done())),
    )
    assert await fut == b"OK"
    assert seen == [(b"OK", True)]
    assert await release(node, b"k", b"tok")


async def test_a_burst_of_requests_in_one_turn_is_answered_in_order(
    cluster: LocalCluster, node: MuxNode
) -> None:
    """Writes after the first of a loop turn are held and sent together: the
    replies still come back to the right requests, in order."""
    assert await node.execute("PING") == b"PONG"
    futures = []
    for i in range(2000):
        # Every other key twice: the second SET NX of a key must be refused.
        key = b"b%d" % (i // 2)
        futures.append(
            node.submit(_commands.set_nx(key, b"t%d" % i, 10_000), timeout=FAST)
        )
    replies = await asyncio.gather(*futures)
    assert replies == [b"OK", None] * 1000
    assert cluster[0].command("GET", "b7") == b"t14"
    assert await node.execute("DEL", *[b"b%d" % i for i in range(1000)]) == 1000
    assert node.connects == 1


async def test_noscript_for_many_requests_in_flight_recovers(
    cluster: LocalCluster, node: MuxNode
) -> None:
    """After SCRIPT FLUSH, every script request already written gets NOSCRIPT;
    each is written again after a SCRIPT LOAD and answers as if nothing
    happened, without losing its place for the requests behind it."""
    keys = [b"n%d" % i for i in range(50)]
    for key in keys:
        assert await set_nx(node, key, b"tok", 5000)
    # The renewals' own connection is up too (it loads the scripts as it opens).
    assert await extend(node, keys[0], b"tok", 5000)
    cluster[0].command("SCRIPT", "FLUSH")
    loads_before = script_calls(cluster[0])
    extends = [
        node.submit(_commands.extend(key, b"tok", 9000), timeout=FAST) for key in keys
    ]
    releases = [
        node.submit(
            _commands.release(key, b"tok", notify=False), timeout=FAST, after=ext
        )
        for key, ext in zip(keys, extends, strict=True)
    ]
    assert [await f for f in extends] == [1] * 50
    assert [await f for f in releases] == [1] * 50
    assert lock_keys(cluster)[0] == 0
    assert node.connects == 1
    # One SCRIPT LOAD per script for the whole burst, not one per request.
    assert script_calls(cluster[0]) == loads_before + 2


def script_calls(server: RedisServer) -> int:
    info = server.command("INFO", "commandstats")
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        # Redis 6: every SCRIPT subcommand in one line; Redis 7+ and Valkey: one
        # line per subcommand.
        if line.startswith(("cmdstat_script:", "cmdstat_script|load:")):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


async def test_scripts_are_loaded_when_connecting(
    cluster: LocalCluster, node: MuxNode
) -> None:
    """No request pays a NOSCRIPT round trip on a fresh connection."""
    from redlock_aio import _scripts

    cluster[0].command("SCRIPT", "FLUSH")
    assert await node.execute("PING") == b"PONG"
    shas = [
        _scripts.RELEASE_SHA,
        _scripts.RELEASE_QUIET_SHA,
        _scripts.EXTEND_SHA,
        _scripts.EXTEND_MANY_SHA,
    ]
    assert cluster[0].command("SCRIPT", "EXISTS", *shas) == [1, 1, 1, 1]
