"""The lean per-node transport: :class:`MuxNode`, one multiplexed connection per
node.

A lock is on every request's hot path. redis-py's pooled client spends most of a
request's client CPU on pool checkout and checkin, command packing and response
callbacks. Here every concurrent request shares ONE connection: it is written at
once (pipelined) and its future queued FIFO; an :class:`asyncio.Protocol` feeds
what arrives into a ``hiredis.Reader`` and resolves the futures in order. No task,
pool or lock per request once connected.

Failure policy: anything that could desynchronise the FIFO (a request cancelled
before its reply, a protocol error, a lost connection, a failed AUTH or SELECT)
aborts the connection and fails every request still in flight on it with
``redis.exceptions.ConnectionError``; the next request reconnects. A reply lost
that way is harmless to the algorithm, which releases everywhere after a failed
attempt.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis._parsers.base import BaseParser
from redis.exceptions import (
    AuthenticationError,
    ConnectionError,
    NoScriptError,
    ResponseError,
)

from . import _scripts
from ._errors import ConfigurationError, RedlockError
from ._node import DEFAULT_PORT, ServerFacts, describe_url, url_db, url_port
from ._notify import Channels, leave_channels, shared_channels
from ._turn import turn_end

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Sequence

__all__ = [
    "MuxNode",
    "acquire_payload",
    "encode_command",
    "extend_payload",
    "release_payload",
    "set_nx_payload",
]

logger = logging.getLogger("redlock_aio")

#: Requests in flight on a connection that make it busy: the writes after it in
#: the same turn of the loop are then held and sent together at the end of the
#: turn (one system call for many requests). A connection with fewer in flight
#: (one client making requests one after the other) writes each at once, with
#: no callback added to the turn.
CORK_DEPTH = 8

_P = TypeVar("_P", bound=asyncio.Protocol)

Arg: TypeAlias = bytes | bytearray | memoryview | str | int | float
#: A set-up command sent on every new connection: a label for messages, the
#: encoded command, and what to do with its reply (``None``: it must succeed,
#: or the connection fails; else the handler gets the reply, error or not).
Setup: TypeAlias = "tuple[str, bytes, Callable[[object], None] | None]"

# Pre-encoded command heads: the hot path only formats key, token and TTL in.
_SET_HEAD = b"*6\r\n$3\r\nSET\r\n"
_NX_PX = b"$2\r\nNX\r\n$2\r\nPX\r\n"
_RELEASE_HEAD = b"*5\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n1\r\n" % (
    _scripts.RELEASE_SHA.encode()
)
_RELEASE_QUIET_HEAD = b"*5\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n1\r\n" % (
    _scripts.RELEASE_QUIET_SHA.encode()
)
_ACQUIRE_HEAD = b"*8\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n2\r\n" % (
    _scripts.ACQUIRE_SHA.encode()
)
_EXTEND_HEAD = b"*6\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n1\r\n" % (
    _scripts.EXTEND_SHA.encode()
)
_OK = b"OK"
_CONFIG_GET_POLICY = b"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$16\r\nmaxmemory-policy\r\n"

# URL query parameters: those MuxNode uses, and redis-py's pool and socket
# tunings that have no meaning here (the caller's per-node timeout bounds every
# request, and replies are always bytes). Any other one is refused, so that a
# URL never silently means less than it says.
_SSL_PARAMS = frozenset(
    {
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
    }
)
_USED_PARAMS = frozenset({"db", "username", "password", "client_name"}) | _SSL_PARAMS
#: What CLIENT SETNAME accepts: printable ASCII, no spaces.
_CLIENT_NAME = re.compile(r"[!-~]*")
_IGNORED_PARAMS = frozenset(
    {
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "retry_on_timeout",
        "max_connections",
        "health_check_interval",
        "timeout",
        "decode_responses",
        "encoding",
        "encoding_errors",
        "protocol",
    }
)


def encode_command(args: tuple[Arg, ...]) -> bytes:
    """``args`` as one RESP array of bulk strings (str as UTF-8, numbers in
    decimal)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, (bytearray, memoryview)):
            data = bytes(arg)
        elif isinstance(arg, bool):
            raise TypeError("a bool is not a Redis command argument")
        elif isinstance(arg, int):
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            raise TypeError(
                f"a Redis command argument must be bytes, str, int or float, "
                f"got {type(arg).__name__}"
            )
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _reply_error(message: str) -> Exception:
    """The exception redis-py raises for this error reply (NoScriptError,
    ReadOnlyError, OutOfMemoryError, AuthenticationError, ..., else
    ResponseError), so that both transports fail alike."""
    exc: Exception = BaseParser.parse_error(message)  # type: ignore[no-untyped-call]
    return exc


def set_nx_payload(key: bytes, token: bytes, ttl_ms: int) -> bytes:
    """``SET key token NX PX ttl_ms``, encoded (the same bytes for every node)."""
    ttl = b"%d" % ttl_ms
    return b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n%s$%d\r\n%s\r\n" % (
        _SET_HEAD,
        len(key),
        key,
        len(token),
        token,
        _NX_PX,
        len(ttl),
        ttl,
    )


def acquire_payload(
    key: bytes, token: bytes, ttl_ms: int, marker: bytes, quarantine_ms: int
) -> bytes:
    """``EVALSHA`` of the acquire script (SET NX and the marker check), encoded."""
    ttl = b"%d" % ttl_ms
    wait = b"%d" % quarantine_ms
    return b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        _ACQUIRE_HEAD,
        len(key),
        key,
        len(marker),
        marker,
        len(token),
        token,
        len(ttl),
        ttl,
        len(wait),
        wait,
    )


def release_payload(key: bytes, token: bytes, notify: bool) -> bytes:
    """``EVALSHA`` of the release script (announced or quiet), encoded."""
    return b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        _RELEASE_HEAD if notify else _RELEASE_QUIET_HEAD,
        len(key),
        key,
        len(token),
        token,
    )


def extend_payload(key: bytes, token: bytes, ttl_ms: int) -> bytes:
    """``EVALSHA`` of the extend script, encoded."""
    ttl = b"%d" % ttl_ms
    return b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        _EXTEND_HEAD,
        len(key),
        key,
        len(token),
        token,
        len(ttl),
        ttl,
    )


def extend_many_payload(items: Sequence[tuple[bytes, bytes, int]]) -> bytes:
    """``EVALSHA`` of the extend-many script for ``(key, token, ttl_ms)`` items,
    encoded."""
    args: list[Arg] = ["EVALSHA", _scripts.EXTEND_MANY_SHA, len(items)]
    args += [key for key, _, _ in items]
    for _, token, ttl_ms in items:
        args += (token, ttl_ms)
    return encode_command(tuple(args))


class Reply(asyncio.Future[Any]):
    """The future of one request written on a :class:`_Conn`.

    Cancelling it (a caller's timeout) tells the connection, which keeps its
    FIFO in step (the reply is dropped when it comes) or aborts a stuck node.
    A request with a ``script`` is written again after ``SCRIPT LOAD`` if the
    node answers NOSCRIPT (after ``SCRIPT FLUSH`` or a restart), once.

    ``hook``, if set, is called with the future as soon as it is done, in the
    same turn of the loop (a done callback would run one turn later).
    """

    __slots__ = ("conn", "hook", "mark", "payload", "script")

    conn: _Conn
    #: ``conn.received`` when the request was written.
    mark: int
    payload: bytes
    script: str | None
    hook: Callable[[Reply], None] | None

    def cancel(self, msg: Any | None = None) -> bool:
        if not super().cancel(msg):
            return False
        self.conn.cancelled(self.mark)
        if self.hook is not None:
            self.settled()
        return True

    def answering(self, now: float, window: float) -> bool:
        """Whether the node has answered anything since this request was
        written, and within the last ``window`` seconds (loop time): it is busy,
        not stuck."""
        conn = self.conn
        return (
            conn.failure is None
            and conn.received != self.mark
            and now - conn.read_at < window
        )

    def settled(self) -> None:
        """Call the hook (the future is done)."""
        try:
            self.hook(self)  # type: ignore[misc]
        except Exception:  # a bug: must not break the connection
            logger.exception("handling a reply from %s", self.conn.name)


def _ignore(reply: object) -> None:
    """A ``SCRIPT LOAD`` reply: an error shows on the request written after it."""


_LOAD_SCRIPTS: list[Setup] = [
    ("SCRIPT LOAD", encode_command(("SCRIPT", "LOAD", script)), _ignore)
    for script in (
        _scripts.ACQUIRE,
        _scripts.RELEASE,
        _scripts.RELEASE_QUIET,
        _scripts.EXTEND,
        _scripts.EXTEND_MANY,
    )
]


class _Conn(asyncio.Protocol):
    """One connection: writes requests as they come, resolves their futures in
    order as replies arrive.

    The FIFO holds a future per request, or ``None`` for a set-up command
    (AUTH, SELECT, SCRIPT LOAD, ...), whose label and reply handler are in
    ``_setup``.
    """

    __slots__ = (
        "_corked",
        "_gates",
        "_later",
        "_loading",
        "_loop",
        "_node",
        "_reader",
        "_setup",
        "_transport",
        "_turn",
        "_waiters",
        "failure",
        "lost",
        "read_at",
        "ready",
        "received",
    )

    def __init__(self, node: MuxNode, loop: asyncio.AbstractEventLoop) -> None:
        self._node = node
        self._loop = loop
        self._reader = hiredis.Reader(replyError=_reply_error)
        self._waiters: deque[Reply | None] = deque()
        self._setup: deque[tuple[str, Callable[[object], None] | None]] = deque()
        self._transport: asyncio.Transport | None = None
        # Scripts being loaded again after NOSCRIPT.
        self._loading: set[str] = set()
        # Writes made later in the same loop turn as the first, sent together.
        self._corked: list[bytes] | None = None
        self._turn = turn_end(loop)
        #: Why the connection is unusable (exception class, message), once it is.
        self.failure: tuple[type[Exception], str] | None = None
        #: How many times data arrived: tells a stuck node from a busy one.
        self.received = 0
        #: When data last arrived (loop time).
        self.read_at = 0.0
        #: Resolves when the transport is closed for good (its socket released).
        self.lost: asyncio.Future[None] = loop.create_future()
        #: Resolves once every required set-up command has succeeded: only
        #: then may a request be written (see :meth:`set_up`).
        self.ready: asyncio.Future[None] = loop.create_future()
        # Required set-up commands not yet answered, and the set-up commands
        # held back until AUTH is answered.
        self._gates = 0
        self._later: list[Setup] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Any transport of the running loop: asyncio's, uvloop's (whose
        # classes are not asyncio.Transport subclasses) or an SSL one.
        self._transport = transport  # type: ignore[assignment]
        self._node._conns.add(self)

    def set_up(self, commands: list[Setup]) -> None:
        """Write the set-up commands; :attr:`ready` resolves once the required
        ones (handler ``None``: AUTH, SELECT, CLIENT SETNAME) have succeeded.

        Nothing is written after AUTH until its reply is in: a command
        pipelined behind a failed AUTH would run as the server's default user
        (a SET on a server whose default user needs no password)."""
        self._gates = sum(1 for _, _, handler in commands if handler is None)
        if not self._gates:
            self.ready.set_result(None)
        self._write_set_up(commands)

    def _write_set_up(self, commands: list[Setup]) -> None:
        for k, (label, payload, handler) in enumerate(commands):
            self._write(payload)
            self._waiters.append(None)
            self._setup.append((label, handler))
            if label == "AUTH":
                self._later = commands[k + 1 :]
                return

    @property
    def name(self) -> str:
        return self._node.name

    def send(
        self,
        payload: bytes,
        script: str | None = None,
        hook: Callable[[Reply], None] | None = None,
    ) -> Reply:
        """Write one request now; its future resolves with the reply."""
        fut = Reply(loop=self._loop)
        fut.conn = self
        fut.mark = self.received
        fut.payload = payload
        fut.script = script
        fut.hook = hook
        corked = self._corked  # self._write(payload), inlined: the hot path
        if corked is None:
            self._transport.write(payload)  # type: ignore[union-attr]
            if len(self._waiters) >= CORK_DEPTH:
                # Busy: hold the next writes of this turn, send them at its end
                # together (they would wait behind these replies anyway).
                self._corked = []
                self._turn.add(self.uncork)
        else:
            corked.append(payload)
        self._waiters.append(fut)
        return fut

    def _write(self, data: bytes) -> None:
        """Write ``data`` now, or with the held writes if a burst is on (see
        :data:`CORK_DEPTH`)."""
        corked = self._corked
        if corked is None:
            self._transport.write(data)  # type: ignore[union-attr]
        else:
            corked.append(data)

    def uncork(self) -> None:
        """Send the writes held since the first of this turn."""
        corked, self._corked = self._corked, None
        if corked and self.usable():
            self._transport.write(b"".join(corked))  # type: ignore[union-attr]

    def usable(self) -> bool:
        """Whether requests may still be written. Not once the connection
        failed, nor once its transport is closing: asyncio saw a write error
        and will call :meth:`connection_lost` later, and a write meanwhile is
        lost (and logged by asyncio as "socket.send() raised exception")."""
        if self.failure is not None:
            return False
        transport = self._transport
        if transport is not None and not transport.is_closing():
            return True
        self.fail(ConnectionError, f"connection to {self._node.name} lost")
        return False

    def _reload(self, fut: Reply) -> None:
        """Load ``fut``'s script (the node answered NOSCRIPT) and write the
        request again, behind the requests already in flight. One SCRIPT LOAD
        serves every request of a burst that got NOSCRIPT. The request keeps
        its mark: the node has answered since it was first written."""
        script, fut.script = fut.script, None
        assert script is not None
        if script not in self._loading:
            self._loading.add(script)
            self._write(encode_command(("SCRIPT", "LOAD", script)))
            self._waiters.append(None)
            self._setup.append(("SCRIPT LOAD", partial(self._loaded, script)))
        self._write(fut.payload)
        self._waiters.append(fut)

    def _loaded(self, script: str, reply: object) -> None:
        self._loading.discard(script)

    def data_received(self, data: bytes) -> None:
        self.received += 1
        self.read_at = self._loop.time()
        reader = self._reader
        waiters = self._waiters
        try:
            reader.feed(data)
            reply = reader.gets()
            while reply is not False:
                fut = waiters.popleft()
                if fut is None:
                    if self._set_up_reply(reply):
                        return
                elif not fut.done():
                    if not isinstance(reply, Exception):
                        fut.set_result(reply)
                    elif fut.script is not None and isinstance(reply, NoScriptError):
                        self._reload(fut)
                        reply = reader.gets()
                        continue
                    else:
                        fut.set_exception(reply)
                    hook = fut.hook
                    if hook is not None:
                        try:
                            hook(fut)
                        except Exception:  # a bug: must not break the connection
                            logger.exception("handling a reply from %s", self.name)
                reply = reader.gets()
        except (hiredis.HiredisError, IndexError) as exc:
            what = "an unexpected reply" if isinstance(exc, IndexError) else exc
            self.fail(ConnectionError, f"protocol error from {self._node.name}: {what}")

    def _set_up_reply(self, reply: object) -> bool:
        """Handle a set-up command's reply; True if it failed the connection."""
        label, handler = self._setup.popleft()
        if handler is not None:
            try:
                handler(reply)
            except Exception:
                logger.exception(
                    "node %s: handling the %s reply", self._node.name, label
                )
            return False
        if not isinstance(reply, Exception):
            if label == "AUTH":
                later, self._later = self._later, []
                self._write_set_up(later)
            self._gates -= 1
            if not self._gates and not self.ready.done():
                self.ready.set_result(None)
            return False
        name = self._node.name
        if label == "AUTH":
            self.fail(
                AuthenticationError,
                f"authentication to {name} failed: {reply} (check the user name "
                "and password in the node URL)",
            )
        else:
            self.fail(ConnectionError, f"{label} on {name} failed: {reply}")
        return True

    def eof_received(self) -> bool:
        # Fail now, not at connection_lost: no request may be written meanwhile.
        self.fail(ConnectionError, f"connection to {self._node.name} closed by server")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        why = f"{type(exc).__name__}: {exc}" if exc is not None else "closed by server"
        self.fail(ConnectionError, f"connection to {self._node.name} lost ({why})")
        self._node._conns.discard(self)
        if not self.lost.done():
            self.lost.set_result(None)

    def fail(self, exc_type: type[Exception], message: str) -> None:
        """Make the connection unusable: abort it, and fail every request still
        in flight on it with ``exc_type(message)``. Only the first call acts."""
        if self.failure is not None:
            return
        self.failure = (exc_type, message)
        self._node._forget(self)
        if not self.ready.done():
            self.ready.set_exception(exc_type(message))
            self.ready.exception()  # retrieved: the opener may be gone
        waiters, self._waiters = self._waiters, deque()
        for fut in waiters:
            if fut is not None and not fut.done():
                fut.set_exception(exc_type(message))
                if fut.hook is not None:
                    fut.settled()
        if self._transport is not None:
            self._transport.abort()

    def cancelled(self, mark: int) -> None:
        """A request was cancelled (timed out) before its reply. Its future
        stays in the FIFO and its reply is dropped when it comes, so the
        connection stays in step. If nothing at all has arrived since that
        request was written, the node is stuck: abort, failing the requests
        queued behind it, rather than let them pile up. A node that is only
        busy (replies still streaming in, as under a burst of thousands of
        requests) keeps its connection and every other request."""
        if self.received == mark:
            self.fail(
                ConnectionError,
                f"connection to {self._node.name} aborted: no reply within the "
                "per-node timeout",
            )


class MuxNode:
    """A :class:`~redlock_aio._node.Node` on one multiplexed connection, written
    by hand in RESP and read with hiredis.

    Connects lazily; concurrent first requests share one connect. AUTH is sent
    first and alone; SELECT, CLIENT SETNAME and the scripts' SCRIPT LOAD follow
    once it has succeeded, and no request is written before every one of them
    has (a failed AUTH or SELECT closes the connection). The scripts run by
    EVALSHA and are loaded again transparently after NOSCRIPT (a ``SCRIPT
    FLUSH`` or a restart).

    Error replies raise what redis-py raises for them (a ``ResponseError``
    subclass such as ``NoScriptError``, ``ReadOnlyError``, ``OutOfMemoryError``;
    ``AuthenticationError`` for NOAUTH/WRONGPASS); connection failures raise
    ``redis.exceptions.ConnectionError``. Messages name the node, never a
    password.

    Until answered once, a new connection also asks ``CONFIG GET
    maxmemory-policy`` for :attr:`facts` (a warning if keys may be evicted).

    Build one with :meth:`from_url`. :meth:`aclose` is final and idempotent.

    :ivar facts: what the server said about itself.
    :ivar connects: connections opened so far (for tests and monitoring).
    """

    __slots__ = (
        "_channels",
        "_closed",
        "_conn",
        "_connecting",
        "_conns",
        "_host",
        "_opening",
        "_path",
        "_port",
        "_setup",
        "_ssl",
        "connects",
        "facts",
        "identity",
        "name",
    )

    def __init__(
        self,
        *,
        host: str = "localhost",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        client_name: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        name: str | None = None,
        identity: Hashable | None = None,
    ) -> None:
        """Prefer :meth:`from_url`. ``path`` selects a unix socket (and ignores
        host and port); ``name`` and ``identity`` default to those of the URL
        that would describe the same node."""
        if username is not None and password is None:
            raise ConfigurationError("a user name needs a password")
        self._host = host
        self._port = port
        self._path = path
        self._ssl = ssl_context
        if name is None or identity is None:
            default: tuple[str, Hashable]
            if path is not None:
                default = (f"unix:{path}", ("unix", path, db))
            else:
                where = f"{host}:{port}" if db == 0 else f"{host}:{port}/{db}"
                default = (where, ("tcp", host.lower(), port, db))
            name = default[0] if name is None else name
            identity = default[1] if identity is None else identity
        self.name: str = name
        self.identity: Hashable = identity
        self.facts = ServerFacts(self.name)
        self._setup: list[Setup] = []
        if password is not None:
            auth = (username, password) if username is not None else (password,)
            self._setup.append(("AUTH", encode_command(("AUTH", *auth)), None))
        if client_name is not None:
            setname = encode_command(("CLIENT", "SETNAME", client_name))
            self._setup.append(("CLIENT SETNAME", setname, None))
        if db != 0:
            self._setup.append((f"SELECT {db}", encode_command(("SELECT", db)), None))
        # The scripts, loaded up front: no request pays a NOSCRIPT round trip,
        # and no burst of them gets NOSCRIPT together on a fresh node.
        self._setup += _LOAD_SCRIPTS
        self._conn: _Conn | None = None
        self._conns: set[_Conn] = set()
        self._connecting: asyncio.Task[_Conn] | None = None
        self._opening: _Conn | None = None
        self._closed = False
        self._channels: Channels | None = None
        self.connects = 0

    @classmethod
    def from_url(cls, url: str) -> MuxNode:
        """A node for a ``redis://[[user]:password@]host[:port][/db]``,
        ``rediss://...`` (TLS) or ``unix:///path/to/redis.sock[?db=N]`` URL.

        Query parameters: ``db``, ``username``, ``password``, ``client_name``;
        for ``rediss://``: ``ssl_cert_reqs`` (``none``, ``optional``,
        ``required``: the default), ``ssl_check_hostname``, ``ssl_ca_certs``,
        ``ssl_ca_path``, ``ssl_certfile``, ``ssl_keyfile``. redis-py's pool and
        socket tunings (``socket_timeout``, ``max_connections``, ...) are
        accepted and ignored.

        :raises ConfigurationError: the URL is invalid or asks for something
            this transport does not do (no I/O has been done, except reading
            TLS certificate files).
        """
        name, identity = describe_url(url)
        parts = urlsplit(url)
        query: dict[str, str] = {}
        for key, values in parse_qs(parts.query).items():
            if key not in _USED_PARAMS and key not in _IGNORED_PARAMS:
                raise ConfigurationError(
                    f"node URL for {name}: unsupported parameter {key!r} "
                    "(MuxNode; pass a redis-py client for anything it does not do)"
                )
            query[key] = values[0]
        scheme = parts.scheme.lower()
        # describe_url has validated the host, port and db, with the same helpers.
        db = url_db(parts)
        if scheme == "unix":
            path: str | None = unquote(parts.path)
            host, port = "localhost", DEFAULT_PORT
        else:
            path = None
            host = unquote(parts.hostname or "")
            port = url_port(parts)
        username = unquote(parts.username) if parts.username else query.get("username")
        password = unquote(parts.password) if parts.password else query.get("password")
        tls = scheme == "rediss"
        if not tls and any(key in _SSL_PARAMS for key in query):
            raise ConfigurationError(
                f"node URL for {name}: ssl_* parameters need a rediss:// URL"
            )
        client_name = query.get("client_name")
        if client_name is not None and not _CLIENT_NAME.fullmatch(client_name):
            raise ConfigurationError(
                f"node URL for {name}: client_name must be printable ASCII with no "
                f"spaces (the server refuses others), got {client_name!r}"
            )
        return cls(
            host=host,
            port=port,
            path=path,
            db=db,
            username=username or None,
            password=password,
            client_name=client_name,
            ssl_context=_ssl_context(name, query) if tls else None,
            name=name,
            identity=identity,
        )

    # -- the Node protocol ---------------------------------------------------------

    async def set_nx(self, key: bytes, token: bytes, ttl_ms: int) -> bool:
        return await self._call(set_nx_payload(key, token, ttl_ms)) == _OK

    async def acquire(
        self, key: bytes, token: bytes, ttl_ms: int, marker: bytes, quarantine_ms: int
    ) -> object:
        payload = acquire_payload(key, token, ttl_ms, marker, quarantine_ms)
        return await self._call(payload, _scripts.ACQUIRE)

    async def init_marker(self, marker: bytes) -> None:
        await self._call(encode_command(("SET", marker, "0")))

    async def release(self, key: bytes, token: bytes, *, notify: bool = True) -> bool:
        payload = release_payload(key, token, notify)
        script = _scripts.RELEASE if notify else _scripts.RELEASE_QUIET
        return await self._call(payload, script) == 1

    async def extend(self, key: bytes, token: bytes, ttl_ms: int) -> bool:
        payload = extend_payload(key, token, ttl_ms)
        return await self._call(payload, _scripts.EXTEND) == 1

    async def extend_many(
        self, items: Sequence[tuple[bytes, bytes, int]]
    ) -> list[bool]:
        payload = extend_many_payload(items)
        reply = await self._call(payload, _scripts.EXTEND_MANY)
        assert isinstance(reply, list)
        return [r == 1 for r in reply]

    async def execute(self, *args: Arg) -> object:
        """Any other command (``PING``, ``INFO``, ``CONFIG GET``, ...): the raw
        RESP2 reply (bytes, int, None or a list; status replies as bytes)."""
        return await self._call(encode_command(args))

    async def aclose(self) -> None:
        """Close the connection, failing requests still in flight, and wait
        until its socket is released. The node cannot be used afterwards.
        Idempotent."""
        self._closed = True
        if self._channels is not None:
            await leave_channels(self._channels_key(), self._channels)
        task = self._connecting
        if task is not None:
            task.cancel()
            await asyncio.wait((task,))
        conns = list(self._conns)
        for conn in conns:
            conn.fail(ConnectionError, f"{self.name}: the node was closed")
        for conn in conns:
            await asyncio.shield(conn.lost)

    def __repr__(self) -> str:
        return f"MuxNode({self.name})"

    # -- internals -------------------------------------------------------------------

    def post(
        self,
        payload: bytes,
        after: asyncio.Future[Any] | None = None,
        script: str | None = None,
        hook: Callable[[Reply], None] | None = None,
    ) -> Reply | None:
        """Write ``payload`` now and return its future, with no task: the fast
        path of a round. ``None`` if that cannot be done at once (not connected
        yet, or ``after`` is still in flight elsewhere than on this connection,
        so the order would not be kept): use the coroutine methods then.

        A request written on the same connection as ``after`` is answered after
        it: the node runs one connection's commands in order. ``hook`` is called
        with the future as soon as it is done (see :class:`Reply`).
        """
        conn = self._conn
        if conn is None or self._closed or not conn.usable():
            return None
        if (
            after is not None
            and not after.done()
            and (type(after) is not Reply or after.conn is not conn)
        ):
            return None
        return conn.send(payload, script, hook)

    async def _call(self, payload: bytes, script: str | None = None) -> object:
        conn = self._conn
        if conn is None or not conn.usable():
            conn = await self._connect()
        elif conn._loop is not asyncio.get_running_loop():
            raise RedlockError(
                f"{self.name}: this node's connection belongs to another event "
                "loop; create one client per event loop"
            )
        # Cancelling this task cancels the Reply, which tells the connection.
        return await conn.send(payload, script)

    async def _connect(self) -> _Conn:
        """The connection, opened if needed; concurrent callers share one
        connect, which a caller's cancellation does not interrupt."""
        if self._closed:
            raise ConnectionError(f"{self.name}: the node was closed")
        task = self._connecting
        if task is None:
            task = asyncio.get_running_loop().create_task(self._open())
            self._connecting = task
            task.add_done_callback(self._connect_done)
        try:
            conn = await asyncio.shield(task)
        except ConnectionError as exc:  # one exception object per waiter
            raise type(exc)(str(exc)) from exc.__cause__
        except asyncio.CancelledError:
            # A waiter timed out: a connection still waiting for its first set-up
            # reply (AUTH) is stuck, as in _Conn.cancelled.
            opening = self._opening
            if opening is not None and not opening.received:
                opening.fail(
                    ConnectionError,
                    f"connection to {self.name} aborted: no reply to its set-up "
                    "(AUTH, SELECT) within the per-node timeout",
                )
            raise
        if conn.failure is not None:  # lost before this caller resumed
            exc_type, message = conn.failure
            raise exc_type(message)
        return conn

    def _connect_done(self, task: asyncio.Task[_Conn]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have been cancelled

    async def _open(self) -> _Conn:
        loop = asyncio.get_running_loop()

        def factory() -> _Conn:
            return _Conn(self, loop)

        try:
            conn = await self._create(factory)
        except OSError as exc:  # refused, unreachable, TLS failure (ssl.SSLError)
            raise ConnectionError(f"Error connecting to {self.name}: {exc}") from exc
        except asyncio.CancelledError:
            if self._closed:  # cancelled by aclose: the waiters are not cancelled
                raise ConnectionError(f"{self.name}: the node was closed") from None
            raise
        if self._closed:
            conn.fail(ConnectionError, f"{self.name}: the node was closed")
            raise ConnectionError(f"{self.name}: the node was closed")
        setup = self._setup
        if not self.facts.eviction_checked:
            setup = [*setup, ("CONFIG GET", _CONFIG_GET_POLICY, self._saw_policy)]
        conn.set_up(setup)
        self.connects += 1
        if not conn.ready.done():
            # AUTH (or SELECT) first: no request before it has succeeded.
            self._opening = conn
            try:
                await conn.ready
            except asyncio.CancelledError:
                conn.fail(ConnectionError, f"{self.name}: the node was closed")
                raise ConnectionError(f"{self.name}: the node was closed") from None
            finally:
                self._opening = None
        self._conn = conn
        return conn

    async def _create(self, factory: Callable[[], _P]) -> _P:
        """A connection to the node (TCP, TLS or unix socket) for ``factory``'s
        protocol."""
        loop = asyncio.get_running_loop()
        if self._path is not None:
            _, conn = await loop.create_unix_connection(factory, self._path)
        else:
            _, conn = await loop.create_connection(
                factory,
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl is not None else None,
            )
        return conn

    async def _create_any(
        self, factory: Callable[[], asyncio.Protocol]
    ) -> asyncio.Protocol:
        try:
            return await self._create(factory)
        except OSError as exc:
            raise ConnectionError(f"Error connecting to {self.name}: {exc}") from exc

    # -- release notifications (pub/sub) --------------------------------------------

    def _channels_key(self) -> tuple[Hashable, bytes]:
        """Which shared pub/sub connection: the server, and the AUTH to send."""
        hello = b"".join(p for label, p, _ in self._setup if label == "AUTH")
        return (self.identity, hello)

    def _pubsub(self) -> Channels:
        """This node's pub/sub connection, shared with every other handle on
        the same server and credentials in this event loop."""
        if self._channels is None:
            key = self._channels_key()
            hello = key[1]
            self._channels = shared_channels(
                key, lambda: Channels(self.name, self._create_any, hello)
            )
        return self._channels

    async def subscribe(
        self, channel: bytes, callback: Callable[[bytes], None]
    ) -> None:
        """Call ``callback(data)`` whenever ``channel`` fires (a release of the key
        it names), over this node's pub/sub connection; returns once the server
        confirmed the subscription."""
        await self._pubsub().subscribe(channel, callback)

    def unsubscribe(self, channel: bytes, callback: Callable[[bytes], None]) -> None:
        if self._channels is not None:
            self._channels.unsubscribe(channel, callback)

    def _saw_policy(self, reply: object) -> None:
        if isinstance(reply, ResponseError):  # CONFIG renamed or denied by ACL
            self.facts.eviction_checked = True
            logger.debug("node %s: cannot read maxmemory-policy: %s", self.name, reply)
        elif not isinstance(reply, Exception):  # else (NOAUTH, LOADING): next time
            self.facts.saw_eviction_policy(reply)

    def _forget(self, conn: _Conn) -> None:
        if self._conn is conn:
            self._conn = None


def _ssl_context(name: str, query: dict[str, str]) -> ssl.SSLContext:
    """The TLS context for a ``rediss://`` URL's ``ssl_*`` parameters, with
    redis-py's meaning and ``ssl.create_default_context()``'s defaults."""
    reqs = query.get("ssl_cert_reqs", "required").lower()
    modes = {
        "none": ssl.CERT_NONE,
        "optional": ssl.CERT_OPTIONAL,
        "required": ssl.CERT_REQUIRED,
    }
    if reqs not in modes:
        raise ConfigurationError(
            f"node URL for {name}: ssl_cert_reqs must be none, optional or required"
        )
    check = query.get("ssl_check_hostname")
    check_hostname = reqs != "none" if check is None else _flag(name, check)
    try:
        ctx = ssl.create_default_context(
            cafile=query.get("ssl_ca_certs"), capath=query.get("ssl_ca_path")
        )
        certfile = query.get("ssl_certfile")
        if certfile is not None:
            ctx.load_cert_chain(certfile, query.get("ssl_keyfile"))
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigurationError(
            f"node URL for {name}: cannot load TLS certificates: {exc}"
        ) from None
    try:
        ctx.check_hostname = check_hostname
        ctx.verify_mode = modes[reqs]
    except ValueError as exc:  # check_hostname with ssl_cert_reqs=none
        raise ConfigurationError(f"node URL for {name}: {exc}") from None
    return ctx


def _flag(name: str, value: str) -> bool:
    flags = {
        "1": True,
        "true": True,
        "yes": True,
        "0": False,
        "false": False,
        "no": False,
    }
    flag = flags.get(value.lower())
    if flag is None:
        raise ConfigurationError(f"node URL for {name}: not a boolean: {value!r}")
    return flag
