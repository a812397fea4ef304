"""A protected store: the resource a lock guards, which records what reached it.

:class:`~._checker.MutexChecker` sees what holders *believed*: each window ends
at its ``valid_until``, so a holder that writes after its validity ran out (a
write delayed in flight, a body that ran on) is never a violation there. The
store sees what *landed*: each write carries its writer's name, its lock's
token and the ``valid_until`` the writer believed it had, and is stamped with
:func:`time.monotonic` as it arrives (one clock for every process of a Linux
machine). :class:`StoreChecker` then finds the writes that landed inside another
holder's window, and the late ones (after their writer's own validity).

:class:`ProtectedStore` serves a loopback TCP port from its own thread, so a
busy event loop in the test's process does not delay the stamp (only the GIL
can, by its switch interval: 5 ms by default). :class:`StoreClient` is its
asyncio client, for any process. The protocol: one JSON object per line, each
way. The token is kept in every record, for a fencing check.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import selectors
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from ._checker import Holding, resource_name
from ._proxy import _loopback, _port

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from types import TracebackType

    from typing_extensions import Self  # typing-time only: no runtime dependency

    from .._lock import Lock

#: A request line longer than this closes its connection (a client out of step).
_MAX_LINE = 1 << 20
#: How long a reply may wait for a client that does not read.
_SEND_TIMEOUT = 5.0


class StoreError(RuntimeError):
    """The store could not serve a request (a malformed one, or an unknown op)."""


@dataclass(frozen=True)
class Write:
    """One write that reached the store, as it arrived (monotonic seconds)."""

    writer: str
    resource: str
    #: The writer's lock token (hex).
    token: str
    #: Until when the writer believed it held the lock, when it sent the write.
    valid_until: float
    #: When the store received it.
    arrived: float
    key: str
    value: str
    #: False when the store refused it (``reject_late``): nothing was stored.
    accepted: bool = True

    @property
    def late(self) -> bool:
        """It landed after the validity its writer believed it had."""
        return self.arrived > self.valid_until


@dataclass(frozen=True)
class StoreViolation:
    """A write the store accepted while another holder's window was open."""

    write: Write
    holding: Holding

    def __str__(self) -> str:
        w, h = self.write, self.holding
        past = (w.arrived - w.valid_until) * 1000
        when = f"{past:.3f} ms after" if past > 0 else f"{-past:.3f} ms before"
        return (
            f"{w.resource!r}: {w.writer} wrote {w.key!r} at {w.arrived:.6f}, {when} "
            f"the end of its validity, inside {h.holder}'s window "
            f"[{h.granted:.6f}, {h.window_end:.6f}]"
        )


class _Windows:
    """The holdings of one resource, to ask which windows were open at a time."""

    def __init__(self, holdings: Iterable[Holding]) -> None:
        self._holdings = sorted(holdings, key=lambda h: h.granted)
        self._starts = [h.granted for h in self._holdings]
        #: The latest window end among the holdings up to each index.
        self._reach = list(accumulate((h.window_end for h in self._holdings), max))

    def open_at(self, t: float) -> Iterator[Holding]:
        """The holdings whose window contains *t* (both ends excluded)."""
        i = bisect.bisect_left(self._starts, t) - 1
        while i >= 0 and self._reach[i] > t:
            if self._holdings[i].window_end > t:
                yield self._holdings[i]
            i -= 1


def _same_lock(holding: Holding, write: Write) -> bool:
    if holding.token and write.token:
        return holding.token == write.token
    return holding.holder == write.writer  # records made without a token


class StoreChecker:
    """Checks the writes a :class:`ProtectedStore` received against the holders'
    windows (the :class:`Holding` records of a ``MutexChecker``)."""

    def __init__(self, writes: Iterable[Write], holdings: Iterable[Holding]) -> None:
        self.writes: list[Write] = list(writes)
        self.holdings: list[Holding] = list(holdings)

    def violations(self) -> list[StoreViolation]:
        """Each accepted write that landed inside the window of another lock on
        its resource (empty when the protected resource saw one holder at a
        time). A write inside its own lock's window is fine."""
        by_resource: dict[str, list[Holding]] = defaultdict(list)
        for h in self.holdings:
            by_resource[h.resource].append(h)
        windows = {resource: _Windows(hs) for resource, hs in by_resource.items()}
        found: list[StoreViolation] = []
        for w in self.writes:
            if w.accepted and (open_ := windows.get(w.resource)) is not None:
                found.extend(
                    StoreViolation(w, h)
                    for h in open_.open_at(w.arrived)
                    if not _same_lock(h, w)
                )
        return found

    def late(self) -> list[Write]:
        """Accepted writes that landed after their writer's believed validity."""
        return [w for w in self.writes if w.accepted and w.late]

    def refused(self) -> list[Write]:
        """Writes the store refused (``reject_late``): they changed nothing."""
        return [w for w in self.writes if not w.accepted]


class ProtectedStore:
    """A key-value store on a loopback port that logs every write, served from
    its own thread. Use it with ``with``, or :meth:`start` and :meth:`stop`.

    :param host: address to listen on; loopback only.
    :param port: port to listen on; 0 picks a free one.
    :param reject_late: refuse a write that arrives after its writer's believed
        validity, as a fencing check would; it is logged with
        ``accepted=False`` and the client's :meth:`StoreClient.write` returns
        False.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, reject_late: bool = False
    ) -> None:
        self.host = _loopback("host", host)
        self._port = _port("port", port, lowest=0)
        self.reject_late = reject_late
        self._values: dict[str, str] = {}
        self._writes: list[Write] = []
        self._records = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake: socket.socket | None = None

    @property
    def port(self) -> int:
        """The listening port.

        :raises RuntimeError: before the first :meth:`start` with ``port=0``.
        """
        if self._port == 0:
            raise RuntimeError("ProtectedStore has no port yet: call start() first")
        return self._port

    @property
    def running(self) -> bool:
        return self._thread is not None

    def client(self) -> StoreClient:
        """A new asyncio client of this store."""
        return StoreClient(self.host, self.port)

    def start(self) -> Self:
        """Listen and serve from a new thread; return ``self``. No-op if running."""
        if self._thread is not None:
            return self
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self._port))
            listener.listen(64)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._port = listener.getsockname()[1]
        wake, self._wake = socket.socketpair()
        self._thread = threading.Thread(
            target=self._serve,
            args=(listener, wake),
            name=f"ProtectedStore:{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close every connection, stop listening and end the thread. Idempotent;
        the records are kept."""
        thread, self._thread = self._thread, None
        wake, self._wake = self._wake, None
        if wake is not None:
            with contextlib.suppress(OSError):
                wake.send(b"x")
        if thread is not None:
            thread.join()
        if wake is not None:
            wake.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self.host}:{self._port}" if self._port else self.host
        return f"ProtectedStore({where}, writes={len(self.writes())})"

    # -- records ----------------------------------------------------------- #

    def writes(self, start: int = 0) -> list[Write]:
        """The writes received so far, in order of arrival, from the
        *start*-th on (to follow them as they come)."""
        with self._records:
            return self._writes[start:]

    def value(self, key: str) -> str | None:
        """What *key* holds now (``None`` if never written)."""
        with self._records:
            return self._values.get(key)

    def checker(self, holdings: Iterable[Holding]) -> StoreChecker:
        """A :class:`StoreChecker` of the writes so far against *holdings*."""
        return StoreChecker(self.writes(), holdings)

    # -- serving (in the store's thread) ------------------------------------ #

    def _serve(self, listener: socket.socket, wake: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ)
        selector.register(wake, selectors.EVENT_READ)
        buffers: dict[socket.socket, bytearray] = {}
        try:
            while True:
                for key, _ in selector.select():
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is wake:
                        return
                    if sock is listener:
                        with contextlib.suppress(OSError):
                            conn, _addr = listener.accept()
                            conn.settimeout(_SEND_TIMEOUT)
                            selector.register(conn, selectors.EVENT_READ)
                            buffers[conn] = bytearray()
                    elif not self._receive(sock, buffers[sock]):
                        selector.unregister(sock)
                        del buffers[sock]
                        sock.close()
        finally:
            for conn in buffers:
                conn.close()
            selector.close()
            listener.close()
            wake.close()

    def _receive(self, conn: socket.socket, buffer: bytearray) -> bool:
        """Read what *conn* sent and answer each complete line; False when the
        connection must close."""
        try:
            data = conn.recv(65536)
        except OSError:
            return False
        arrived = time.monotonic()  # before any parsing: the stamp of arrival
        if not data:
            return False
        buffer += data
        replies: list[bytes] = []
        while (end := buffer.find(b"\n")) >= 0:
            replies.append(self._answer(bytes(buffer[:end]), arrived))
            del buffer[: end + 1]
        if len(buffer) > _MAX_LINE:
            return False
        try:
            conn.sendall(b"".join(replies))
        except OSError:
            return False
        return True

    def _answer(self, line: bytes, arrived: float) -> bytes:
        try:
            request = json.loads(line)
            op = request["op"]
            if op == "write":
                reply = self._write(request, arrived)
            elif op == "read":
                reply = {"ok": True, "value": self.value(str(request["key"]))}
            else:
                reply = {"ok": False, "error": f"unknown op {op!r}"}
        except (ValueError, KeyError, TypeError) as exc:
            reply = {"ok": False, "error": f"bad request: {exc!r}"}
        return json.dumps(reply).encode() + b"\n"

    def _write(self, request: dict[str, Any], arrived: float) -> dict[str, Any]:
        valid_until = float(request["valid_until"])
        write = Write(
            writer=str(request["writer"]),
            resource=str(request["resource"]),
            token=str(request["token"]),
            valid_until=valid_until,
            arrived=arrived,
            key=str(request["key"]),
            value=str(request["value"]),
            accepted=not (self.reject_late and arrived > valid_until),
        )
        with self._records:
            self._writes.append(write)
            if write.accepted:
                self._values[write.key] = write.value
        return {"ok": True} if write.accepted else {"ok": False, "refused": "late"}


class StoreClient:
    """An asyncio client of a :class:`ProtectedStore`: one connection, opened on
    first use, one request at a time. A request cancelled or failed midway
    closes the connection (its reply would answer the next request); the next
    request opens a new one."""

    def __init__(self, host: str, port: int) -> None:
        self.host = _loopback("host", host)
        self.port = _port("port", port, lowest=1)
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._turn: asyncio.Lock | None = None

    async def read(self, key: str) -> str | None:
        """What *key* holds (``None`` if never written)."""
        value = (await self._request({"op": "read", "key": key}))["value"]
        return None if value is None else str(value)

    async def write(self, key: str, value: str, *, lock: Lock, writer: str) -> bool:
        """Write *value* at *key* under *lock*, whose ``valid_until`` must be on
        :func:`time.monotonic` (the default clock). Returns True if stored,
        False if the store refused it for arriving after ``lock.valid_until``
        (only with ``reject_late``)."""
        reply = await self._request(
            {
                "op": "write",
                "key": key,
                "value": value,
                "writer": writer,
                "resource": resource_name(lock),
                "token": lock.token.hex(),
                "valid_until": lock.valid_until,
            }
        )
        return bool(reply["ok"])

    async def aclose(self) -> None:
        """Close the connection. Idempotent."""
        streams, self._streams = self._streams, None
        if streams is not None:
            streams[1].close()
            with contextlib.suppress(OSError):
                await streams[1].wait_closed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _request(self, request: dict[str, Any]) -> dict[str, Any]:
        if self._turn is None:
            self._turn = asyncio.Lock()
        async with self._turn:
            if self._streams is None:
                self._streams = await asyncio.open_connection(self.host, self.port)
            reader, writer = self._streams
            try:
                writer.write(json.dumps(request).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
                if not line:
                    raise ConnectionError("the store closed the connection")
            except BaseException:
                self._streams = None
                writer.close()
                raise
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise StoreError(reply["error"])
        return reply
