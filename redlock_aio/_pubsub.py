"""The pub/sub connection of a :class:`~._mux.MuxNode`: one per server and
credentials in each event loop, shared by every client of the process, on which
waiters subscribe to the release channel of the key they wait for (the waiting
itself is :mod:`._notify`'s).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import hiredis

from ._resp import encode_command

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Hashable

    from ._node import Callback

logger = logging.getLogger("redlock_aio")


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
        conn.transport.write(encode_command((b"SUBSCRIBE", channel)))
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
            conn.transport.write(encode_command((b"UNSUBSCRIBE", channel)))

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
                conn.transport.write(encode_command((b"UNSUBSCRIBE", channel)))

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
