"""A fault-injecting TCP proxy in front of one redis node, for tests.

:class:`RedisServer` faults (kill, pause) hit every client of a node at once.
Redlock must also survive faults on one *path*: a client partitioned from one
node, a slow link, a reply lost after the write was applied. A
:class:`FaultProxy` injects those faults only into the connections made through
it, so another client, direct or through its own proxy, still reaches the node
normally.

By default the proxy is transparent to connection loss: when the node closes
its side, the client's connection is closed too. With ``reconnect_upstream``
it is a pooling proxy instead (twemproxy, envoy, a managed service's front
end): the client's connection is kept, each request still unanswered when the
node went away gets an error reply, and the next request opens a new
connection to the node, so the client never sees the node restart.

Pure asyncio, in the caller's event loop: no threads, no extra dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import socket
import struct
import time
from typing import TYPE_CHECKING

from ._resp import Framer, command_words

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from types import TracebackType
    from typing import Any

    from typing_extensions import Self  # typing-time only: no runtime dependency

logger = logging.getLogger("redlock_aio.testing")

_DIRECTIONS = ("request", "reply", "both")
_CHUNK = 65536
#: Chunks queued per direction before the proxy stops reading (TCP backpressure).
_QUEUE_CHUNKS = 64
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends an RST
#: What a pooling proxy answers to a request the node never answered...
_LOST_REPLY = b"-ERR upstream connection lost\r\n"
#: ... and to one it could not forward, the node being unreachable.
_UNAVAILABLE_REPLY = b"-ERR upstream unavailable\r\n"
_RECONNECT_INTERVAL = 0.05
#: Commands that set up a connection: a pooling proxy sends them again (the
#: latest of each) on each new connection to the node.
_SETUP_COMMANDS = frozenset(
    [(b"AUTH",), (b"HELLO",), (b"SELECT",), (b"CLIENT", b"SETNAME")]
)
#: Commands after which replies no longer answer requests one to one: on such
#: a connection an upstream loss closes the client's connection.
_SUBSCRIBING = frozenset([b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE", b"MONITOR"])


def _loopback(what: str, host: object) -> str:
    """Return *host* as an address to use, or raise if it is not loopback.

    ``"localhost"`` becomes ``"127.0.0.1"``: resolving the name could yield
    another address, and listening on every address it resolves to would give
    each its own port.
    """
    if not isinstance(host, str):
        raise TypeError(f"{what} must be a str, got {type(host).__name__}")
    if host == "localhost":
        return "127.0.0.1"
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"{what} must be a loopback address (127.0.0.0/8, ::1 or localhost), "
            f"got {host!r}"
        )
    return host


def _port(what: str, port: object, *, lowest: int) -> int:
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"{what} must be an int, got {type(port).__name__}")
    if not lowest <= port <= 65535:
        raise ValueError(f"{what} must be in {lowest}..65535, got {port}")
    return port


def _seconds(seconds: object, what: str = "seconds") -> float:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        raise TypeError(f"{what} must be a number, got {type(seconds).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what} must be finite and >= 0, got {seconds!r}")
    return float(seconds)


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close *writer*'s connection with a TCP RST (SO_LINGER 0, then abort)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # Already closed (abort is a no-op too): asyncio's socket raises OSError,
        # uvloop's (fd -1 by then) ValueError.
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    writer.transport.abort()


class _Link:
    """One client connection and its own connection to the node."""

    __slots__ = (
        "broken",
        "client",
        "client_reader",
        "finished",
        "setup",
        "subscribed",
        "tasks",
        "upstream",
    )

    def __init__(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        self.client_reader = client_reader
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        #: The proxy dropped bytes of this link: its streams are out of sync.
        self.broken = False
        self.tasks: list[asyncio.Task[None]] = []
        #: Set once the link must end: True to close with FIN, False with RST.
        self.finished: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        #: Pooling: the client's latest setup commands, by command.
        self.setup: dict[tuple[bytes, ...], bytes] = {}
        #: Pooling: the client subscribed, so replies are not counted.
        self.subscribed = False

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.upstream) if w is not None]

    def finish(self, graceful: bool) -> None:
        if not self.finished.done():
            self.finished.set_result(graceful)

    def abort(self) -> None:
        """Reset both connections now (the link's task then cleans up)."""
        self.finish(False)
        for writer in self.writers():
            _rst(writer)


class _Session:
    """One connection to the node of a pooling link, and how many of the
    requests written to it it has not answered yet."""

    __slots__ = ("lost", "reader", "swallow", "unanswered", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.unanswered = 0
        #: Replies to the setup commands sent again: not the client's.
        self.swallow = 0
        #: Set when the node closed it; the reader has answered what was left.
        self.lost = False
        self.reader: asyncio.Task[None] | None = None


class FaultProxy:
    """Listens on a free loopback port and forwards each client connection to
    the target node, through a fault that can be changed at any time.

    Each accepted client connection gets its own connection to the node. A
    fault applies at once to the connections already open and to new ones:

    * :meth:`pass_through` / :meth:`heal`: forward everything (the default).
    * :meth:`add_latency`: delay each chunk, keeping byte order.
    * :meth:`blackhole`: a partition where TCP still connects: read and drop
      everything, forward and answer nothing.
    * :meth:`reset`: abort every connection with a TCP RST, now and on accept.
    * :meth:`drop_replies_after`: requests still reach the node (and are
      applied), replies after a moment are dropped.

    Dropped bytes leave a connection out of sync (a later reply would answer
    the wrong request), so **each fault call (heal() included) resets every
    connection that lost bytes** to the previous fault; its client sees a
    ``ConnectionError`` and reconnects. A connection that lost nothing (say,
    idle during a blackhole) carries on. A blackhole or dropped replies also
    hide the node's closing from the client, as a real partition would.

    With ``reconnect_upstream=True`` the proxy pools, as twemproxy or envoy
    do: the node closing a connection (a restart, ``CLIENT KILL``) does not
    close the client's. It reads the client's stream as whole RESP commands
    and counts the replies; each request the node did not answer gets
    ``-ERR upstream connection lost``, in order, so a pipelining client stays
    in step; the next request opens a new connection to the node (trying for
    up to ``reconnect_timeout`` seconds, else ``-ERR upstream unavailable``),
    after sending again the client's ``AUTH``, ``HELLO``, ``SELECT`` and
    ``CLIENT SETNAME``. A client that subscribed (or ran ``MONITOR``) is
    disconnected instead: its subscriptions are gone.

    Use it with ``async with``, or :meth:`start` and :meth:`aclose`.

    :param target_host: the node's address; loopback only.
    :param target_port: the node's port.
    :param host: address to listen on; loopback only.
    :param port: port to listen on; 0 picks a free one.
    :param reconnect_upstream: pool: keep the client's connection when the
        node's closes, and reconnect to the node for the next request.
    :param reconnect_timeout: pooling: how long one request may wait for the
        node to accept a connection again.
    :raises ValueError: a host is not a loopback address (127.0.0.0/8, ``::1``
        or ``"localhost"``, taken as ``127.0.0.1``), or a port is out of range.
        Checked before any I/O.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        reconnect_upstream: bool = False,
        reconnect_timeout: float = 10.0,
    ) -> None:
        self.target_host = _loopback("target_host", target_host)
        self.target_port = _port("target_port", target_port, lowest=1)
        self.host = _loopback("host", host)
        self._port = _port("port", port, lowest=0)
        self.reconnect_upstream = bool(reconnect_upstream)
        self.reconnect_timeout = _seconds(reconnect_timeout, "reconnect_timeout")
        self._server: asyncio.Server | None = None
        self._serving = False
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._total = 0
        self._mode = "pass"
        self._request_delay = 0.0
        self._reply_delay = 0.0
        self._drop_after = math.inf

    # -- lifecycle --------------------------------------------------------- #

    @property
    def port(self) -> int:
        """The listening port (kept across :meth:`aclose` and a new :meth:`start`).

        :raises RuntimeError: before the first :meth:`start` with ``port=0``.
        """
        if self._port == 0:
            raise RuntimeError("FaultProxy has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        """``redis://host:port/0``, for a client that should go through the proxy."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while listening."""
        return self._serving

    async def start(self) -> Self:
        """Start listening; return ``self``. No-op if already listening.

        After :meth:`aclose` it listens again on the same port: a path that went
        down (connections refused) and came back.
        """
        if not self._serving:
            self._serving = True
            try:
                server = await asyncio.start_server(self._accept, self.host, self._port)
            except BaseException:
                self._serving = False
                raise
            self._port = server.sockets[0].getsockname()[1]
            self._server = server
        return self

    async def aclose(self) -> None:
        """Stop listening, reset every connection (RST) and wait until each of
        the proxy's tasks has ended. Idempotent; the fault mode is kept."""
        server, self._server = self._server, None
        self._serving = False
        if server is not None:
            server.close()
        for link in list(self._links):
            link.abort()
        # Only the tasks not done: a finished task stays in _tasks until its
        # done callback runs, and from 3.12 on gather() of finished tasks
        # returns without yielding, so that callback would never get a turn.
        while tasks := [t for t in self._tasks if not t.done()]:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._links.clear()  # a link whose task was cancelled before it ran
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        where = f"{self.host}:{self._port}" if self._port else self.host
        return (
            f"FaultProxy({where} -> {self.target_host}:{self.target_port}, "
            f"mode={self._mode!r}, connections={self.connections})"
        )

    # -- faults ------------------------------------------------------------ #

    @property
    def mode(self) -> str:
        """The current fault: ``"pass"``, ``"latency"``, ``"blackhole"``,
        ``"reset"`` or ``"drop_replies"``."""
        return self._mode

    def pass_through(self) -> None:
        """Forward everything, undelayed (the default)."""
        self._set("pass")

    def heal(self) -> None:
        """Same as :meth:`pass_through`. New connections, and open ones that lost
        nothing, work normally; a connection that lost bytes to the fault (a
        blackholed request, a dropped reply) is reset (RST), so its client gets
        a ``ConnectionError`` instead of hanging or reading a reply that answers
        another request, and reconnects."""
        self._set("pass")

    def add_latency(self, seconds: float, *, direction: str = "both") -> None:
        """Delay every chunk by *seconds* in one direction or both, keeping byte
        order: a slow link, not a lossy one. Replaces the current fault (a second
        call does not add up); chunks already delayed keep their due time.

        :param seconds: the delay, >= 0.
        :param direction: ``"request"`` (client to node), ``"reply"`` (node to
            client) or ``"both"``.
        """
        delay = _seconds(seconds)
        if direction not in _DIRECTIONS:
            raise ValueError(
                f"direction must be one of {_DIRECTIONS}, got {direction!r}"
            )
        self._set(
            "latency",
            request_delay=delay if direction in ("request", "both") else 0.0,
            reply_delay=delay if direction in ("reply", "both") else 0.0,
        )

    def blackhole(self) -> None:
        """Partition the path, TCP still connecting: accept connections, read and
        drop everything, never forward nor answer (chunks still delayed are
        dropped too), and hide the node closing a connection. A request in
        flight waits for ever: only the client's own timeout ends it. Open
        connections that lose bytes stay silent until the next fault call
        (:meth:`heal` included), which resets them."""
        self._set("blackhole")

    def reset(self) -> None:
        """Abort every open connection with a TCP RST (``SO_LINGER`` 0), both to
        the client and to the node, and each new one right after accept, until
        the fault changes: the client sees ``ECONNRESET``."""
        self._set("reset")
        for link in list(self._links):
            link.abort()

    def drop_replies_after(self, seconds: float) -> None:
        """Keep forwarding requests, but drop the replies that arrive more than
        *seconds* after this call: the node applies the request, the client
        never hears back (a write whose outcome the client cannot know).

        :param seconds: grace period, >= 0.
        """
        grace = _seconds(seconds)
        self._set("drop_replies")
        self._drop_after = time.monotonic() + grace

    def _set(
        self, mode: str, *, request_delay: float = 0.0, reply_delay: float = 0.0
    ) -> None:
        for link in list(self._links):
            if link.broken:
                link.abort()
        self._mode = mode
        self._request_delay = request_delay
        self._reply_delay = reply_delay
        self._drop_after = math.inf

    # -- observation ------------------------------------------------------- #

    @property
    def connections(self) -> int:
        """Client connections open now (until both of their sockets closed)."""
        return len(self._links)

    @property
    def total_connections(self) -> int:
        """Client connections accepted since construction, reset ones included."""
        return self._total

    # -- forwarding -------------------------------------------------------- #

    def _dropping(self, link: _Link, direction: str) -> bool:
        """Whether what travels in *direction* on *link* now must be dropped;
        if so the link is marked broken."""
        mode = self._mode
        drop = mode in ("blackhole", "reset") or (
            direction == "reply"
            and mode == "drop_replies"
            and time.monotonic() > self._drop_after
        )
        if drop:
            link.broken = True
        return drop

    def _delay(self, direction: str) -> float:
        return self._request_delay if direction == "request" else self._reply_delay

    def _spawn(
        self, coro: Coroutine[Any, Any, None], link: _Link, name: str
    ) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(
            coro, name=f"FaultProxy:{self._port}:{name}"
        )
        link.tasks.append(task)
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("%s failed", task.get_name(), exc_info=exc)

    def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._total += 1
        if not self._serving or self._mode == "reset":
            _rst(writer)
            return
        link = _Link(reader, writer)
        self._links.add(link)
        self._spawn(self._serve(link), link, "link")

    async def _serve(self, link: _Link) -> None:
        """Forward both ways until either side closes or fails (or a fault ends
        the link), then close both sides."""
        graceful = False
        try:
            if self.reconnect_upstream:
                self._pool(link)
            elif not await self._connect(link):
                return  # the client gets an RST
            graceful = await link.finished
        finally:
            me = asyncio.current_task()
            others = [t for t in link.tasks if t is not me]
            for task in others:
                task.cancel()
            for writer in link.writers():
                if graceful:
                    writer.close()
                else:
                    _rst(writer)
            try:
                for writer in link.writers():
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
                await asyncio.gather(*others, return_exceptions=True)
            finally:
                self._links.discard(link)

    async def _connect(self, link: _Link) -> bool:
        """Connect to the node and forward chunks both ways; False if the link
        must end now (the node refused, or a reset came while connecting)."""
        try:
            up_reader, upstream = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError as exc:
            logger.debug("%r: cannot reach the node: %s", self, exc)
            if not self._dropping(link, "request"):
                return False  # an RST, the nearest to a refusal
            # Partitioned: the client must not learn that the node is down.
            self._spawn(
                self._pump(link, link.client_reader, None, "request"), link, "discard"
            )
            return True
        link.upstream = upstream
        if link.finished.done():  # reset while connecting
            return False
        requests, replies = _queue(), _queue()
        self._spawn(
            self._pump(link, link.client_reader, requests, "request"),
            link,
            "request-in",
        )
        self._spawn(
            self._drain(link, requests, upstream, "request"), link, "request-out"
        )
        self._spawn(self._pump(link, up_reader, replies, "reply"), link, "reply-in")
        self._spawn(self._drain(link, replies, link.client, "reply"), link, "reply-out")
        return True

    def _pool(self, link: _Link) -> None:
        """Forward whole commands to the node over connections opened as needed,
        and its replies back (see the class docstring)."""
        requests, replies = _queue(), _queue()
        self._spawn(
            self._pump(link, link.client_reader, requests, "request", Framer()),
            link,
            "request-in",
        )
        self._spawn(self._forward_pooled(link, requests, replies), link, "request-out")
        self._spawn(self._drain(link, replies, link.client, "reply"), link, "reply-out")

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        queue: asyncio.Queue[tuple[float, bytes]] | None,
        direction: str,
        framer: Framer | None = None,
    ) -> None:
        """Read chunks (whole messages, with a framer), stamp each with its due
        time, queue the ones not dropped; queue ``b""`` at end of stream.
        Without a queue, drop everything."""
        try:
            while data := await reader.read(_CHUNK):
                for item in [data] if framer is None else framer.feed(data):
                    if queue is not None and not self._dropping(link, direction):
                        await queue.put(
                            (time.monotonic() + self._delay(direction), item)
                        )
            if queue is None:
                link.finish(True)
            else:
                await queue.put((time.monotonic() + self._delay(direction), b""))
        except OSError:
            link.finish(False)
        except ValueError as exc:  # the framer: not RESP
            logger.debug("%r: %s", self, exc)
            link.finish(False)

    async def _forward_pooled(
        self,
        link: _Link,
        requests: asyncio.Queue[tuple[float, bytes]],
        replies: asyncio.Queue[tuple[float, bytes]],
    ) -> None:
        """Write each request at its due time to the node's current connection;
        open a new one when there is none, or the node closed it (once that
        connection's unanswered requests have their error replies queued)."""
        session: _Session | None = None
        while True:
            due, data = await requests.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                link.finish(True)
                return
            if self._dropping(link, "request"):
                continue
            if session is not None and (session.lost or session.writer.is_closing()):
                assert session.reader is not None
                await session.reader
                session = None
            if session is None:
                session = await self._open_session(link, replies)
                if session is None:
                    await self._reply(link, replies, _UNAVAILABLE_REPLY)
                    continue
            _note(link, data)
            session.unanswered += 1  # from now on a loss answers it
            session.writer.write(data)
            with contextlib.suppress(OSError):  # the reader sees the loss
                await session.writer.drain()

    async def _open_session(
        self, link: _Link, replies: asyncio.Queue[tuple[float, bytes]]
    ) -> _Session | None:
        """A new connection to the node (tried for up to ``reconnect_timeout``),
        the client's setup commands sent on it first; None if unreachable."""
        deadline = time.monotonic() + self.reconnect_timeout
        while True:
            try:
                reader, writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
                break
            except OSError as exc:
                if time.monotonic() >= deadline:
                    logger.debug("%r: cannot reach the node: %s", self, exc)
                    return None
            await asyncio.sleep(_RECONNECT_INTERVAL)
        session = _Session(writer)
        link.upstream = writer
        for command in link.setup.values():
            writer.write(command)
            session.swallow += 1
        session.reader = self._spawn(
            self._pump_replies(link, session, reader, replies), link, "reply-in"
        )
        return session

    async def _pump_replies(
        self,
        link: _Link,
        session: _Session,
        reader: asyncio.StreamReader,
        replies: asyncio.Queue[tuple[float, bytes]],
    ) -> None:
        """Queue the node's replies (whole messages) for the client, counting
        them off the session's requests; once the node closed the connection,
        answer each request left with an error (a subscribed link ends)."""
        framer = Framer()
        try:
            while data := await reader.read(_CHUNK):
                for message in framer.feed(data):
                    if session.swallow:
                        session.swallow -= 1
                    else:
                        if message[:1] != b">":  # a RESP3 push answers nothing
                            session.unanswered -= 1
                        await self._reply(link, replies, message)
        except (OSError, ValueError) as exc:
            logger.debug("%r: the connection to the node failed: %s", self, exc)
        session.lost = True
        session.writer.close()
        if link.subscribed:
            link.finish(True)  # its subscriptions went with the connection
            return
        lost, session.unanswered = session.unanswered, 0
        if lost > 0:
            await self._reply(link, replies, _LOST_REPLY * lost)

    async def _reply(
        self, link: _Link, replies: asyncio.Queue[tuple[float, bytes]], message: bytes
    ) -> None:
        if not self._dropping(link, "reply"):
            await replies.put((time.monotonic() + self._delay("reply"), message))

    async def _drain(
        self,
        link: _Link,
        queue: asyncio.Queue[tuple[float, bytes]],
        writer: asyncio.StreamWriter,
        direction: str,
    ) -> None:
        """Write queued chunks in order, each at its due time, unless the fault
        now drops them; at end of stream end the link (or, when the node closed
        behind a partition, only close the node's side)."""
        try:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data:
                    if not self._dropping(link, direction):
                        if writer.is_closing():
                            # Lost (a reset, a kill): asyncio's transport would
                            # drop the write, uvloop's raises RuntimeError.
                            raise ConnectionResetError("connection lost")
                        writer.write(data)
                        await writer.drain()
                elif direction == "reply" and self._dropping(link, direction):
                    # The node closed, but the partition hides it from the client.
                    if link.upstream is not None:
                        link.upstream.close()
                    return
                else:
                    link.finish(True)
                    return
        except OSError:
            link.finish(False)


def _queue() -> asyncio.Queue[tuple[float, bytes]]:
    """Chunks or messages with their due times, bounded: TCP backpressure."""
    return asyncio.Queue(_QUEUE_CHUNKS)


def _note(link: _Link, command: bytes) -> None:
    """Keep what a pooling link must know of a command it forwards."""
    words = tuple(command_words(command))
    if words[:1] and words[0] in _SUBSCRIBING:
        link.subscribed = True
    for setup in _SETUP_COMMANDS:
        if words[: len(setup)] == setup:
            link.setup[setup] = command
