"""Release notifications: one pub/sub connection per node, on which waiters
subscribe to the release channel of the key they wait for.

The release script publishes on the key's channel when it deletes the key, so a
waiter retries the moment the lock is free instead of sleeping and polling. A
notification can still be missed (the subscription is made after a failed
attempt; a connection may drop), so waiters keep a jittered polling timer as
the fallback: notifications only make the wait shorter, never required.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

import hiredis

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Hashable, Sequence

logger = logging.getLogger("redlock_aio")

#: Called with each message's data.
Callback: TypeAlias = "Callable[[bytes], None]"


@runtime_checkable
class Notifier(Protocol):
    """A node that can tell when a key's release channel fires."""

    async def subscribe(self, channel: bytes, callback: Callback) -> None:
        """Call ``callback(data)`` on every message on ``channel``; returns once
        the server confirmed the subscription."""
        ...

    def unsubscribe(self, channel: bytes, callback: Callback) -> None:
        """Stop calling ``callback``; does not wait."""
        ...


def _command(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    out.extend(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    return b"".join(out)


class _SubConn(asyncio.Protocol):
    """The pub/sub connection: replies are subscription confirmations and
    messages, dispatched to the :class:`Channels` that owns it."""

    def __init__(self, owner: Channels) -> None:
        self._owner = owner
        self._reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = loop.create_future()
        #: Resolves with the AUTH reply (an error reply is a result too).
        self.authed: asyncio.Future[object] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Any transport of the running loop (uvloop's are not asyncio.Transport).
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._reader.feed(data)
            reply = self._reader.gets()
            while reply is not False:
                authed = self.authed
                if authed is not None and not authed.done():
                    authed.set_result(reply)
                else:
                    self._owner._reply(self, reply)
                reply = self._reader.gets()
        except hiredis.HiredisError as exc:  # a reply that is not RESP
            logger.warning("pub/sub on %s: protocol error: %s", self._owner.name, exc)
            self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        authed = self.authed
        if authed is not None and not authed.done():
            authed.set_exception(ConnectionError("connection lost"))
            authed.exception()  # retrieved: the opener may be gone
        self._owner._lost(self)
        if not self.lost.done():
            self.lost.set_result(None)


class Channels:
    """Subscriptions of one node, over one lazily opened pub/sub connection.

    A channel stays subscribed while at least one callback wants it. If the
    connection drops, every subscription is gone (waiters fall back to their
    polling timers) and the next :meth:`subscribe` opens a new one.

    :param name: the node's name, for messages.
    :param connect: opens a connection with the given protocol factory (the
        node's host, port, TLS).
    :param hello: commands to send first (AUTH), already encoded.
    """

    def __init__(
        self,
        name: str,
        connect: Callable[
            [Callable[[], asyncio.Protocol]], Awaitable[asyncio.Protocol]
        ],
        hello: bytes = b"",
    ) -> None:
        self.name = name
        self._connect = connect
        self._hello = hello
        self._conn: _SubConn | None = None
        self._opening: asyncio.Future[_SubConn] | None = None
        self._callbacks: dict[bytes, set[Callback]] = {}
        self._confirmed: dict[bytes, asyncio.Future[None]] = {}
        self._closed = False

    async def subscribe(self, channel: bytes, callback: Callback) -> None:
        callbacks = self._callbacks.get(channel)
        if callbacks is not None:
            callbacks.add(callback)
            await asyncio.shield(self._confirmed[channel])
            return
        self._callbacks[channel] = {callback}
        confirmed = asyncio.get_running_loop().create_future()
        self._confirmed[channel] = confirmed
        try:
            conn = await self._connection()
        except BaseException as exc:
            self._drop(channel, exc)
            raise
        assert conn.transport is not None
        conn.transport.write(_command(b"SUBSCRIBE", channel))
        await asyncio.shield(confirmed)

    def unsubscribe(self, channel: bytes, callback: Callback) -> None:
        callbacks = self._callbacks.get(channel)
        if callbacks is None:
            return
        callbacks.discard(callback)
        if callbacks:
            return
        self._drop(channel, None)
        conn = self._conn
        if conn is not None and conn.transport is not None:
            conn.transport.write(_command(b"UNSUBSCRIBE", channel))

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        self._closed = True
        opening = self._opening
        if opening is not None:
            opening.cancel()
            await asyncio.wait((opening,))
        conn = self._conn
        if conn is not None and conn.transport is not None:
            conn.transport.abort()
            await asyncio.shield(conn.lost)
        for channel in list(self._confirmed):
            self._drop(channel, ConnectionError(f"{self.name}: closed"))

    def _drop(self, channel: bytes, exc: BaseException | None) -> None:
        self._callbacks.pop(channel, None)
        confirmed = self._confirmed.pop(channel, None)
        if confirmed is not None and not confirmed.done():
            if exc is None:
                confirmed.cancel()
            else:
                confirmed.set_exception(
                    ConnectionError(f"subscription on {self.name} failed: {exc}")
                )
                confirmed.exception()  # retrieved: nobody may be waiting

    async def _connection(self) -> _SubConn:
        if self._closed:
            raise ConnectionError(f"{self.name}: closed")
        if self._conn is not None and self._conn.transport is not None:
            return self._conn
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
            self._opening.add_done_callback(self._opened)
        return await asyncio.shield(self._opening)

    async def _open(self) -> _SubConn:
        conn = await self._connect(lambda: _SubConn(self))
        assert isinstance(conn, _SubConn)
        if self._hello and conn.transport is not None:
            # AUTH alone, and nothing more before it succeeded: a SUBSCRIBE
            # behind a failed AUTH would run as the default user.
            authed = conn.authed = asyncio.get_running_loop().create_future()
            conn.transport.write(self._hello)
            try:
                reply = await authed
            except BaseException:
                conn.abort()
                raise
            if isinstance(reply, hiredis.ReplyError):
                conn.abort()
                raise ConnectionError(f"pub/sub on {self.name}: AUTH failed: {reply}")
        self._conn = conn
        return conn

    def _opened(self, fut: asyncio.Future[_SubConn]) -> None:
        self._opening = None
        if not fut.cancelled():
            fut.exception()  # retrieved: its waiters may all have gone

    def _reply(self, conn: _SubConn, reply: object) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            if isinstance(reply, hiredis.ReplyError):  # SUBSCRIBE refused (ACL)
                logger.debug("pub/sub on %s: %s", self.name, reply)
                conn.abort()
            return
        kind, channel = reply[0], reply[1]
        if kind == b"message" and len(reply) > 2:
            data = reply[2]
            for callback in list(self._callbacks.get(channel, ())):
                callback(data)
        elif kind == b"subscribe":
            confirmed = self._confirmed.get(channel)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            elif channel not in self._callbacks and conn.transport is not None:
                # Everyone left before the server confirmed: leave it too.
                conn.transport.write(_command(b"UNSUBSCRIBE", channel))

    def _lost(self, conn: _SubConn) -> None:
        if self._conn is conn:
            self._conn = None
        # Every subscription is gone: wake the waiters (a retry is never wrong)
        # so that they do not sleep out their fallback timer.
        for channel, callbacks in list(self._callbacks.items()):
            for callback in list(callbacks):
                callback(b"")
            self._drop(channel, ConnectionError("connection lost"))


class _Shared:
    """One :class:`Channels` shared by every handle on the same server with the
    same credentials in one event loop, and how many handles use it."""

    __slots__ = ("channels", "users")

    def __init__(self, channels: Channels) -> None:
        self.channels = channels
        self.users = 0


_shared: dict[tuple[asyncio.AbstractEventLoop, Hashable], _Shared] = {}


def shared_channels(key: Hashable, make: Callable[[], Channels]) -> Channels:
    """The pub/sub connection of the node ``key`` names (its identity and
    credentials), opened by ``make`` for the first user in this event loop.

    Every client of the process that waits on the same node then shares one
    connection: a release is read once per node, not once per client. Each
    user calls :func:`leave_channels` once, when it closes."""
    where = (asyncio.get_running_loop(), key)
    shared = _shared.get(where)
    if shared is None or shared.channels.closed:
        shared = _shared[where] = _Shared(make())
    shared.users += 1
    return shared.channels


async def leave_channels(key: Hashable, channels: Channels) -> None:
    """One user of ``channels`` is done; the last closes them."""
    where = (asyncio.get_running_loop(), key)
    shared = _shared.get(where)
    if shared is None or shared.channels is not channels:
        await channels.aclose()  # not (or no longer) the shared one
        return
    shared.users -= 1
    if shared.users <= 0:
        del _shared[where]
        await channels.aclose()


class _Line:
    """The waiters of one process for one key, in arrival order. A release
    wakes only the first of them (every node announces it, and every client of
    the process may be subscribed: the released token tells the repeats), so
    that a process sends one attempt per release, not one per waiting task."""

    __slots__ = ("seen", "waiters")

    def __init__(self) -> None:
        self.waiters: deque[Wakeup] = deque()
        self.seen: deque[bytes] = deque(maxlen=16)

    def notify(self, token: bytes) -> None:
        if token:
            if token in self.seen:
                return
            self.seen.append(token)
        self.wake_first()

    def wake_first(self) -> None:
        for waiter in self.waiters:
            if not waiter.signalled:
                waiter.signal()
                return


_lines: dict[tuple[asyncio.AbstractEventLoop, bytes], _Line] = {}


class Wakeup:
    """Wakes a waiting acquire when a node announces that its key was released
    (if it is first in line in this process), and otherwise after the fallback
    delay it is given.

    :param nodes: the nodes that can notify.
    :param channel: the key's release channel.
    :param spawn: starts a tracked task (the AsyncRedlock's), so that a pending
        subscription never outlives the client.
    """

    def __init__(
        self,
        nodes: Sequence[Notifier],
        channel: bytes,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
    ) -> None:
        self._nodes = nodes
        self._channel = channel
        self._spawn = spawn
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self.signalled = False
        # A subscription was dropped (its connection lost): subscribe again
        # before the next wait, which would otherwise only poll.
        self._dropped = False
        self._timeout = 0.0
        where = (self._loop, channel)
        line = _lines.get(where)
        if line is None:
            line = _lines[where] = _Line()
        self._line = line
        line.waiters.append(self)

    def _heard(self, token: bytes) -> None:
        if not token:  # the connection dropped (see Channels._lost): every
            self._dropped = True  # waiter retries now and subscribes again
            self.signal()
            return
        self._line.notify(token)

    def signal(self) -> None:
        self.signalled = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def start(self, timeout: float) -> None:
        """Subscribe on every node; return once one confirmed, or all failed or
        timed out (then waits are plain polling)."""
        self._timeout = timeout
        self._dropped = False
        tasks = [self._spawn(self._subscribe(node, timeout)) for node in self._nodes]
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(
                pending, return_when=asyncio.FIRST_COMPLETED
            )
            if any(t.result() for t in done if not t.cancelled()):
                return

    async def _subscribe(self, node: Notifier, timeout: float) -> bool:
        try:
            await asyncio.wait_for(node.subscribe(self._channel, self._heard), timeout)
        except (Exception, asyncio.TimeoutError) as exc:  # noqa: BLE001 (polling covers it)
            logger.debug("no release notifications from a node: %r", exc)
            return False
        return True

    async def wait(
        self, delay: float, closing: asyncio.Future[None] | None = None
    ) -> None:
        """Until this waiter is woken by a release (possibly already, since its
        last wait), ``delay`` seconds have passed or ``closing`` resolves.
        After a dropped subscription: subscribe again, and return at once (a
        release in between would not have been heard)."""
        if self._dropped:
            await self.start(self._timeout)
            self.signalled = False
            return
        if not self.signalled:
            waiter = self._waiter = self._loop.create_future()
            timer = self._loop.call_later(delay, _resolve, waiter)
            if closing is not None:
                closing.add_done_callback(self._wake)
            try:
                await waiter
            finally:
                timer.cancel()
                if closing is not None:
                    closing.remove_done_callback(self._wake)
                self._waiter = None
        self.signalled = False

    def _wake(self, _: object) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        """Leave the line (passing on a wake-up not used) and unsubscribe."""
        line = self._line
        line.waiters.remove(self)
        if self.signalled:
            line.wake_first()
        if not line.waiters:
            _lines.pop((self._loop, self._channel), None)
        for node in self._nodes:
            node.unsubscribe(self._channel, self._heard)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
