"""An in-process fake Redis node and transport: no sockets, no server process.

Scenario 6 measures the client's own Python CPU per acquire+release. Over real
sockets that figure drowns in system calls and in the nodes' own work on the
same two cores; here every connection is a :class:`FakeTransport` whose
``write(data)`` parses the RESP commands (a ``hiredis.Reader`` reads the
client-to-server arrays of bulk strings), runs them on a :class:`FakeServer`
(an in-memory dict) and delivers the replies of that write with one
``loop.call_soon(protocol.data_received, replies)``, as a socket would deliver
one read.

- :class:`FakeMuxNode`: redlock_aio's ``MuxNode`` with its one connection hook,
  ``_create(factory)``, opening a fake transport instead of a socket. Nothing
  else of the library is touched, so the same code runs against any version
  that keeps that hook.
- :class:`FakeMuxFloor`: the mux floor (``_floor.MuxConnection``, the same
  protocol class) on the same fake transport.

The server knows the commands the library and the floor send: ``SET`` (``NX``,
``XX``, ``PX``, ``EX``), ``GET``, ``DEL``, ``EXISTS``, ``PEXPIRE``, ``PTTL``,
``EVALSHA`` / ``EVAL`` of the lock scripts, ``SCRIPT LOAD`` / ``EXISTS`` /
``FLUSH``, ``AUTH``, ``SELECT``, ``CLIENT ...``, ``CONFIG GET
maxmemory-policy``, ``PING``, ``ECHO``, ``TIME``, ``INFO``, ``DBSIZE``,
``FLUSHALL``, ``PUBLISH``, ``SUBSCRIBE``, ``UNSUBSCRIBE``. A script is
recognised by its text when it is loaded (compare-and-delete, with or without a
``PUBLISH``; compare-and-pexpire, one key or many; ``SET NX`` with the marker
check, the marker taken as present and "0"), so that scripts renamed or
re-digested by a later version still run; an unknown command or script gets an
error reply and is counted in :attr:`FakeServer.unknown`.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, TypeVar, cast

import hiredis

from redlock_aio import MuxNode

from ._floor import EXTEND_LUA, RELEASE_LUA, MuxConnection, MuxFloor, encode

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

_P = TypeVar("_P", bound=asyncio.Protocol)

#: Prefix of a key's release channel in the library's release script.
CHANNEL_PREFIX = b"__redlock__:"

#: Ports of the fake nodes' URLs (nothing listens there: no socket is opened).
FAKE_PORTS = (1, 2, 3, 4, 5, 6, 7)


class Status(str):
    """A status reply (``+OK``)."""


class Err(str):
    """An error reply (``-ERR ...``)."""


Reply: TypeAlias = Any  # int | bytes | None | Status | Err | list[Reply]
#: A lock script's Python semantics: (server, KEYS, ARGV) -> reply.
Script: TypeAlias = "Callable[[FakeServer, list[bytes], list[bytes]], Reply]"

_OK = b"+OK\r\n"
_NIL = b"$-1\r\n"
_ZERO = b":0\r\n"
_ONE = b":1\r\n"


def encode_reply(value: Reply) -> bytes:
    """``value`` in RESP2."""
    if value is None:
        return _NIL
    if isinstance(value, bool):
        return _ONE if value else _ZERO
    if isinstance(value, int):
        return _ONE if value == 1 else _ZERO if value == 0 else b":%d\r\n" % value
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, Err):
        return b"-%s\r\n" % value.encode()
    if isinstance(value, Status):
        return _OK if value == "OK" else b"+%s\r\n" % value.encode()
    if isinstance(value, str):
        data = value.encode()
        return b"$%d\r\n%s\r\n" % (len(data), data)
    if isinstance(value, list):
        return b"*%d\r\n" % len(value) + b"".join(encode_reply(v) for v in value)
    raise TypeError(f"cannot encode {value!r}")


class FakeServer:
    """One fake Redis node: keys in a dict, lazily expired on the monotonic
    clock; scripts by digest; pub/sub channels to the subscribed transports."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.data: dict[bytes, tuple[bytes, float | None]] = {}
        self.scripts: dict[bytes, Script] = {}
        self.subscribers: dict[bytes, set[FakeTransport]] = {}
        #: Commands (and scripts) the server did not know, with counts.
        self.unknown: collections.Counter[str] = collections.Counter()
        self.commands = 0
        self.connections = 0

    # -- keys ------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        entry = self.data.get(key)
        if entry is None:
            return None
        expires = entry[1]
        if expires is not None and expires <= time.monotonic():
            del self.data[key]
            return None
        return entry[0]

    def set(self, key: bytes, value: bytes, px: int | None) -> None:
        self.data[key] = (
            value,
            None if px is None else time.monotonic() + px / 1000.0,
        )

    def delete(self, key: bytes) -> int:
        if self.get(key) is None:
            return 0
        del self.data[key]
        return 1

    def pexpire(self, key: bytes, px: int) -> int:
        value = self.get(key)
        if value is None:
            return 0
        self.set(key, value, px)
        return 1

    def publish(self, channel: bytes, message: bytes) -> int:
        subs = self.subscribers.get(channel)
        if not subs:
            return 0
        push = encode_reply([b"message", channel, message])
        for transport in list(subs):
            transport.push(push)
        return len(subs)

    # -- commands --------------------------------------------------------------

    def feed(self, conn: FakeTransport, commands: list[list[bytes]]) -> bytes:
        """Run ``commands`` (one write's worth) and return their replies."""
        out = []
        for args in commands:
            self.commands += 1
            name = args[0].upper() if args else b""
            handler = _COMMANDS.get(name)
            if handler is None:
                self.unknown[name.decode(errors="replace")] += 1
                value: Reply = Err(f"ERR unknown command '{name.decode()}'")
            else:
                try:
                    value = handler(self, conn, args)
                except (IndexError, ValueError) as exc:
                    value = Err(f"ERR fake node: bad arguments ({exc})")
            if value is _SILENT:
                continue
            out.append(encode_reply(value))
        return b"".join(out)

    def load(self, body: bytes) -> bytes:
        """``SCRIPT LOAD``: recognise the script by its text, return its SHA1."""
        sha = hashlib.sha1(body).hexdigest().encode()
        if sha not in self.scripts:
            self.scripts[sha] = classify(body)
        return sha

    def run_script(self, sha: bytes, args: list[bytes]) -> Reply:
        fn = self.scripts.get(sha.lower())
        if fn is None:
            return Err("NOSCRIPT No matching script. Please use EVAL.")
        numkeys = int(args[0])
        keys, argv = args[1 : 1 + numkeys], args[1 + numkeys :]
        return fn(self, keys, argv)


#: A handler's "no reply" (SUBSCRIBE answers through pushes).
_SILENT: Any = object()


# -- scripts -----------------------------------------------------------------------


def _acquire(server: FakeServer, keys: list[bytes], argv: list[bytes]) -> Reply:
    """The acquire script with its marker taken as present and "0" (a node
    initialised, no quarantine): 1 if set, 0 if held."""
    if server.get(keys[0]) is not None:
        return 0
    server.set(keys[0], argv[0], int(argv[1]))
    return 1


def _release(server: FakeServer, keys: list[bytes], argv: list[bytes]) -> Reply:
    if server.get(keys[0]) == argv[0]:
        del server.data[keys[0]]
        server.publish(CHANNEL_PREFIX + keys[0], argv[0])
        return 1
    return 0


def _release_quiet(server: FakeServer, keys: list[bytes], argv: list[bytes]) -> Reply:
    if server.get(keys[0]) == argv[0]:
        del server.data[keys[0]]
        return 1
    return 0


def _extend(server: FakeServer, keys: list[bytes], argv: list[bytes]) -> Reply:
    if server.get(keys[0]) == argv[0]:
        return server.pexpire(keys[0], int(argv[1]))
    return 0


def _extend_many(server: FakeServer, keys: list[bytes], argv: list[bytes]) -> Reply:
    out: list[Reply] = []
    for i, key in enumerate(keys):
        if server.get(key) == argv[2 * i]:
            out.append(server.pexpire(key, int(argv[2 * i + 1])))
        else:
            out.append(0)
    return out


def _unknown_script(body: bytes) -> Script:
    def run(server: FakeServer, keys: list[bytes], argv: list[bytes]) -> Reply:
        server.unknown[f"script {body[:40]!r}"] += 1
        return Err("ERR fake node: script not understood")

    return run


def classify(body: bytes) -> Script:
    """The Python semantics of a lock script, recognised by its text."""
    text = body.decode(errors="replace")
    if "PEXPIRE" in text:
        return _extend_many if "ipairs" in text else _extend
    if '"DEL"' in text or "'DEL'" in text:
        return _release if "PUBLISH" in text else _release_quiet
    if "NX" in text and "SET" in text:
        return _acquire
    return _unknown_script(body)


# -- commands ----------------------------------------------------------------------


def _c_set(server: FakeServer, conn: FakeTransport, args: list[bytes]) -> Reply:
    key, value = args[1], args[2]
    nx = xx = False
    px: int | None = None
    i = 3
    while i < len(args):
        opt = args[i].upper()
        if opt == b"NX":
            nx = True
        elif opt == b"XX":
            xx = True
        elif opt == b"PX":
            i += 1
            px = int(args[i])
        elif opt == b"EX":
            i += 1
            px = int(args[i]) * 1000
        elif opt != b"KEEPTTL":
            return Err("ERR syntax error")
        i += 1
    if nx or xx:
        present = server.get(key) is not None
        if (nx and present) or (xx and not present):
            return None
    server.set(key, value, px)
    return Status("OK")


def _c_get(server: FakeServer, conn: FakeTransport, args: list[bytes]) -> Reply:
    return server.get(args[1])


def _c_del(server: FakeServer, conn: FakeTransport, args: list[bytes]) -> Reply:
    return sum(server.delete(k) for k in args[1:])


def _c_exists(server: FakeServer, conn: FakeTransport, args: list[bytes]) -> Reply:
    return sum(server.get(k) is not None for k in args[1:])


def _c_pexpire(server: FakeServer, conn: FakeTransport, args: list[bytes]) -> Reply:
    return server.pexpire(args[1], int(args[2]))


def _c_pttl(server: FakeServer, conn: FakeTransport, args: list[bytes]) -> Reply:
    if server.get(args[1]) is None:
        return -2
    expires = server.data[args[1]][1]
    return -1 if expires is None else int((expires - time.monotonic()) * 1000)


def _c_evalsha(server: FakeServer, conn: FakeTransport, args: list[bytes]) -> Reply:
    return server.run_script(args[1], args[2:])


def _c_eval(server: FakeServer, conn: FakeTransport, args: list[bytes]) -> Reply:
    return server.run_script(server.load(args[1]), args[2:])


def _c_script(server: FakeServer, conn: FakeTransport, args: list[bytes]) -> Reply:
    sub = args[1].upper()
    if sub == b"LOAD":
        return server.load(args[2])
    if sub == b"EXISTS":
        return [int(sha.lower() in server.scripts) for sha in args[2:]]
    if sub == b"FLUSH":
        server.scripts.clear()
        return Status("OK")
    return Err(f"ERR unknown SCRIPT subcommand '{sub.decode()}'")


def _c_ok(server: FakeServer, conn: FakeTransport, args: list[bytes]) -> Reply:
    return Status("OK")


def _c_config(server: FakeServer, conn: FakeTransport, args: list[bytes]) -> Reply:
    sub = args[1].upper()
    if sub == b"GET":
        if args[2].lower() == b"maxmemory-policy":
            return [b"maxmemory-policy", b"noeviction"]
        return []
    return Status("OK")


def _c_ping(server: FakeServer, conn: FakeTransport, args: list[bytes]) -> Reply:
    return args[1] if len(args) > 1 else Status("PONG")


def _c_echo(server: FakeServer, conn: FakeTransport, args: list[bytes]) -> Reply:
    return args[1]


def _c_time(server: FakeServer, conn: FakeTransport, args: list[bytes]) -> Reply:
    now = time.time()
    return [b"%d" % int(now), b"%d" % int((now % 1) * 1e6)]


def _c_info(server: FakeServer, conn: FakeTransport, args: list[bytes]) -> Reply:
    return (
        b"# Server\r\nredis_version:7.2.0\r\nrun_id:%s\r\nuptime_in_seconds:3600\r\n"
        % hashlib.sha1(server.name.encode()).hexdigest().encode()
    )


def _c_dbsize(server: FakeServer, conn: FakeTransport, args: list[bytes]) -> Reply:
    return len(server.data)


def _c_flushall(server: FakeServer, conn: FakeTransport, args: list[bytes]) -> Reply:
    server.data.clear()
    return Status("OK")


def _c_publish(server: FakeServer, conn: FakeTransport, args: list[bytes]) -> Reply:
    return server.publish(args[1], args[2])


def _c_subscribe(server: FakeServer, conn: FakeTransport, args: list[bytes]) -> Reply:
    for channel in args[1:]:
        server.subscribers.setdefault(channel, set()).add(conn)
        conn.channels.add(channel)
        conn.push(encode_reply([b"subscribe", channel, len(conn.channels)]))
    return _SILENT


def _c_unsubscribe(server: FakeServer, conn: FakeTransport, args: list[bytes]) -> Reply:
    for channel in args[1:] or sorted(conn.channels):
        conn.channels.discard(channel)
        subs = server.subscribers.get(channel)
        if subs is not None:
            subs.discard(conn)
            if not subs:
                del server.subscribers[channel]
        conn.push(encode_reply([b"unsubscribe", channel, len(conn.channels)]))
    return _SILENT


_COMMANDS: dict[bytes, Callable[[FakeServer, FakeTransport, list[bytes]], Reply]] = {
    b"SET": _c_set,
    b"GET": _c_get,
    b"DEL": _c_del,
    b"UNLINK": _c_del,
    b"EXISTS": _c_exists,
    b"PEXPIRE": _c_pexpire,
    b"PTTL": _c_pttl,
    b"EVALSHA": _c_evalsha,
    b"EVAL": _c_eval,
    b"SCRIPT": _c_script,
    b"AUTH": _c_ok,
    b"SELECT": _c_ok,
    b"CLIENT": _c_ok,
    b"CONFIG": _c_config,
    b"PING": _c_ping,
    b"ECHO": _c_echo,
    b"TIME": _c_time,
    b"INFO": _c_info,
    b"DBSIZE": _c_dbsize,
    b"FLUSHALL": _c_flushall,
    b"FLUSHDB": _c_flushall,
    b"PUBLISH": _c_publish,
    b"SUBSCRIBE": _c_subscribe,
    b"UNSUBSCRIBE": _c_unsubscribe,
}


# -- the transport -----------------------------------------------------------------


class FakeTransport(asyncio.Transport):
    """A connection to a :class:`FakeServer`: each ``write`` is parsed and run at
    once, and its replies are delivered in one ``data_received`` call on the
    next turn of the loop."""

    def __init__(
        self,
        server: FakeServer,
        protocol: asyncio.Protocol,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__()
        self.server = server
        self._protocol = protocol
        self._loop = loop
        self._reader = hiredis.Reader()
        self._closing = False
        self.channels: set[bytes] = set()
        server.connections += 1

    @classmethod
    def attach(cls, server: FakeServer, protocol: _P) -> _P:
        """Connect ``protocol`` to ``server`` (``connection_made`` is called)."""
        transport = cls(server, protocol, asyncio.get_running_loop())
        protocol.connection_made(transport)
        return protocol

    # -- what the protocol calls ------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        replies = self.handle(data)
        if replies:
            self._loop.call_soon(self._deliver, replies)

    def handle(self, data: bytes | bytearray | memoryview) -> bytes:
        """The node's side of a write: parse, run, encode the replies."""
        reader = self._reader
        reader.feed(data if type(data) is bytes else bytes(data))
        commands = []
        while (command := reader.gets()) is not False:
            commands.append(command)
        return self.server.feed(self, commands) if commands else b""

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def push(self, data: bytes) -> None:
        """Server-initiated data (pub/sub confirmations and messages)."""
        if not self._closing:
            self._loop.call_soon(self._deliver, data)

    def _deliver(self, data: bytes) -> None:
        if not self._closing:
            self._protocol.data_received(data)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        for channel in self.channels:
            subs = self.server.subscribers.get(channel)
            if subs is not None:
                subs.discard(self)
                if not subs:
                    del self.server.subscribers[channel]
        self.channels.clear()
        self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closing

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(
        self, high: int | None = None, low: int | None = None
    ) -> None:
        return None

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def is_reading(self) -> bool:
        return not self._closing

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = cast("asyncio.Protocol", protocol)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return ("127.0.0.1", 0)
        return default


def fake_servers(n: int) -> list[FakeServer]:
    return [FakeServer(f"fake-{i + 1}") for i in range(n)]


def fake_urls(n: int) -> list[str]:
    """Loopback URLs naming the fake nodes (never connected to)."""
    return [f"redis://127.0.0.1:{FAKE_PORTS[i]}/0" for i in range(n)]


# -- the library's node on it --------------------------------------------------------


class FakeMuxNode(MuxNode):
    """``MuxNode`` whose connections (requests and pub/sub) are fake transports
    to :attr:`fake`; everything else is the library's own code."""

    fake: FakeServer

    @classmethod
    def make(cls, url: str, server: FakeServer) -> FakeMuxNode:
        node = cls.from_url(url)
        if not isinstance(node, FakeMuxNode):  # from_url no longer honours cls
            raise TypeError(f"MuxNode.from_url returned {type(node).__name__}")
        node.fake = server
        return node

    async def _create(self, factory: Callable[[], _P]) -> _P:
        return FakeTransport.attach(self.fake, factory())


# -- the floor on it -----------------------------------------------------------------


class FakeMuxFloor(MuxFloor):
    """The mux floor with its connections on fake transports."""

    name: ClassVar[str] = "floor (mux)"

    def __init__(self, urls: Sequence[str], servers: Sequence[FakeServer]) -> None:
        super().__init__(urls)
        self._servers = list(servers)

    async def _open(self) -> list[MuxConnection]:
        conns = [FakeTransport.attach(s, MuxConnection()) for s in self._servers]
        for script in (RELEASE_LUA, EXTEND_LUA):
            for conn in conns:
                await conn.request(encode(b"SCRIPT", b"LOAD", script.encode()))
        return conns
