"""The lean per-node transport: :class:`MuxNode`, one pipelined connection per
node (and a second one for renewals of held locks).

A lock is on every request's hot path. redis-py's pooled client spends most of a
request's client CPU on pool checkout and checkin, command packing and response
callbacks. Here every concurrent request shares ONE connection: its bytes
(encoded once, by :mod:`._commands`) are written at once and its future queued
FIFO; an :class:`asyncio.Protocol` feeds what arrives into a ``hiredis.Reader``
and resolves the futures in order. No task, pool or lock per request.

The connection owns every request's timeout, because only it knows:

- when a request was really written (a burst's writes are sent together at the
  end of the turn of the loop that made them, and requests made while the
  connection opens are written once it is up): the timeout counts from there;
- whether the node is still answering: a request that times out while replies
  to this client's earlier requests keep arriving gets up to
  :data:`BACKLOG_GRACE` more timeouts (a client's own burst is not a failing
  node), never past its ``not_after``;
- whether the node is stuck: a request that times out with no complete reply
  since it was written (a node that hangs, or streams a reply that never ends)
  fails every request on the connection, and the next request opens another,
  as does a reply that grows past :data:`MAX_REPLY_BYTES`. A silent node's
  connection is retired, not closed: a node that only stalled (a fork, a slow
  disk, a descheduled process) still runs what was written to it, releases
  above all, and it is closed once that is answered (or after
  :data:`RETIRED_FOR` timeouts). ``aclose()`` likewise gives a node that is
  still answering up to a timeout to answer what was written before the
  socket closes (a socket closed with requests unread loses them).

Failure policy: anything that could desynchronise the FIFO (a protocol error, a
lost connection, a failed AUTH or SELECT) aborts the connection and fails every
request still in flight on it with ``redis.exceptions.ConnectionError``; the
next request reconnects. A reply lost that way is harmless to the algorithm,
which releases everywhere after a failed attempt. A request that timed out keeps
its place in the FIFO: its reply is dropped when it comes.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import time
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import hiredis
from redis.exceptions import (
    AuthenticationError,
    ConnectionError,
    NoScriptError,
    ResponseError,
)

from . import _commands
from ._errors import ConfigurationError, RedlockError
from ._node import ServerFacts
from ._pubsub import Channels, leave_channels, shared_channels
from ._resp import Arg, encode_command, reply_error
from ._url import check_host, mux_params

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Hashable

    from ._commands import Command
    from ._node import OnDone

__all__ = ["MuxNode"]

logger = logging.getLogger("redlock_aio")

#: Requests in flight on a connection that make it busy: the writes after it in
#: the same turn of the loop are then held and sent together at the end of the
#: turn (one system call for many requests). A connection with fewer in flight
#: (one client making requests one after the other) writes each at once.
CORK_DEPTH = 8
#: Requests in flight on one connection (written, reply not yet read) beyond
#: which further ones wait in the client, unwritten and untimed, until replies
#: make room: a burst of 100,000 is not written at once, where all but the
#: first thousands would time out behind the client's own backlog (reading
#: their replies takes it seconds), be retried, and time out again.
WINDOW = 1024
#: More timeouts a request gets while its node is still answering others.
BACKLOG_GRACE = 4
#: A check of a request's timeout that runs later than this share of the
#: timeout after its deadline says that the client stalled, not the node: the
#: request gets a timeout more (not counted as grace).
LATE = 0.5
#: How long a retired connection (see the module docstring) stays open for the
#: replies to what was written on it, in timeouts of its slowest request: with
#: the default per-node timeout (5 % of the TTL), the TTL, after which its
#: releases would be moot.
RETIRED_FOR = 20
#: Retired connections a node keeps open at most; beyond, one is closed at once.
MAX_RETIRED = 4
#: How often ``aclose()`` looks whether the node has answered what was written.
DRAIN_POLL = 0.005
#: The most bytes a reply may take (the library's largest, an ``extend_many``
#: of 1,000 locks, takes 4 KB): a node streaming more is aborted, not buffered.
MAX_REPLY_BYTES = 16 * 1024 * 1024

_P = TypeVar("_P", bound=asyncio.Protocol)

_INF = math.inf
_get_running_loop = asyncio.get_running_loop


def loop_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """``loop.time``, or the C function it calls: asyncio's own loops read
    ``time.monotonic()`` in a Python method, a frame per call that a request
    pays several times (uvloop's has its own clock)."""
    if type(loop).time is asyncio.BaseEventLoop.time:
        return time.monotonic
    return loop.time


#: A set-up command sent on every new connection: a label for messages, the
#: encoded command, and what to do with its reply (``None``: it must succeed,
#: or the connection fails; else the handler gets the reply, error or not).
Setup: TypeAlias = "tuple[str, bytes, Callable[[object], None] | None]"

_CONFIG_GET_POLICY = encode_command(("CONFIG", "GET", "maxmemory-policy"))


def _ignore(reply: object) -> None:
    """A ``SCRIPT LOAD`` reply: an error shows on the request written after it."""


_LOAD_SCRIPTS: list[Setup] = [
    ("SCRIPT LOAD", encode_command(("SCRIPT", "LOAD", script)), _ignore)
    for script in _commands.SCRIPTS
]


class PendingReply(asyncio.Future[Any]):
    """The future of one request to a :class:`MuxNode`, and what its
    connection needs to time it: when it is due, how much grace it has had,
    and how many replies the connection had read when it was written.

    ``on_done``, if set, is called as soon as the future is done, in the same
    turn of the loop, then dropped (no reference back to the caller survives
    the request).
    """

    __slots__ = (
        "command",
        "conn",
        "deadline",
        "graces",
        "mark",
        "node",
        "not_after",
        "on_done",
        "reloaded",
        "sent_at",
        "timeout",
    )

    command: Command | None
    conn: _Connection | None
    #: loop time at which it is due; infinite until written
    deadline: float
    #: times the backlog grace was given (unset until the first: a store
    #: fewer per request, as for ``reloaded``)
    graces: int
    #: ``conn.answered`` when it was written; -1 until then
    mark: int
    node: MuxNode
    not_after: float
    on_done: OnDone | None
    #: written again after NOSCRIPT (once only); unset until then
    reloaded: bool
    #: loop time just before its bytes were handed to the transport (the node
    #: cannot have run it earlier); infinite until then
    sent_at: float
    timeout: float

    def cancel(self, msg: Any | None = None) -> bool:
        # Cancelled by its caller: its reply, when it comes, is dropped.
        if not super().cancel(msg):
            return False
        self.node._cancelled(self)
        self.settled()
        return True

    def settled(self) -> None:
        """Call and drop ``on_done``, and drop the command (the future is done)."""
        self.command = None
        hook, self.on_done = self.on_done, None
        if hook is not None:
            try:
                hook(self)
            except Exception:  # a bug: must not break the connection
                logger.exception("handling a reply")


def _send_when_due(
    node: MuxNode, fut: PendingReply, after: asyncio.Future[object]
) -> None:
    """``fut``'s ``after`` request is done: send it (unless cancelled meanwhile)."""
    if not fut.done():
        command = fut.command
        if command is not None and command.repeatable:
            _echo_behind(after, command)
        node._send_or_queue(fut, fut.get_loop())


def _answered(after: asyncio.Future[object], command: Command) -> bool:
    """Whether ``after`` is done; if it is, :func:`_echo_behind` first."""
    if not after.done():
        return False
    if command.repeatable:
        _echo_behind(after, command)
    return True


def _echo_behind(after: asyncio.Future[object], command: Command) -> None:
    """If ``after`` failed with a connection retired while its node stalled
    (see :meth:`_Connection.retire`), it may still run once the node wakes, and
    ``command``, sent on another connection, could run before it (or, behind
    a set-up that waits for the node, never): write it on the retired one too,
    right behind ``after``. Only for a repeatable command (a release)."""
    conn = getattr(after, "conn", None)
    if isinstance(conn, _Connection):
        conn.echo(command.resp)


async def _drain(conns: list[_Connection]) -> None:
    """Before these sockets close: while the node answers, give it up to
    :data:`BACKLOG_GRACE` + 1 timeouts (of the slowest request written), and
    at most one without a reply, to answer what was written to them. A socket
    closed with requests the node has not read yet loses them: a release that
    timed out on a slow node would leave its key until the TTL."""
    conns = [c for c in conns if c.unanswered()]
    if not conns:
        return
    loop = asyncio.get_running_loop()
    patience = max(c.patience() for c in conns)
    now = loop.time()
    give_up = now + patience * (BACKLOG_GRACE + 1)
    quiet_until = now + patience
    answered = sum(c.answered for c in conns)
    while any(c.unanswered() for c in conns) and now < give_up:
        seen = sum(c.answered for c in conns)
        if seen != answered:
            answered = seen
            quiet_until = now + patience
        elif now >= quiet_until:
            return
        await asyncio.sleep(DRAIN_POLL)
        now = loop.time()


def _timed_out(fut: PendingReply) -> None:
    fut.set_exception(TimeoutError(f"no reply within {fut.timeout * 1000:.0f} ms"))
    fut.settled()


class _Connection(asyncio.Protocol):
    """One connection: writes requests as they come, resolves their futures in
    order as replies arrive, and times them (see the module docstring).

    The FIFO holds a future per request, or ``None`` for a set-up command
    (AUTH, SELECT, SCRIPT LOAD, ...), whose label and reply handler are in
    ``_setup``.
    """

    __slots__ = (
        "_backlog",
        "_buffered",
        "_clock",
        "_cork_mark",
        "_corked",
        "_corked_replies",
        "_gates",
        "_later",
        "_loading",
        "_loop",
        "_node",
        "_owed",
        "_patience",
        "_reader",
        "_setup",
        "_timer",
        "_timer_at",
        "_transport",
        "_waiters",
        "answered",
        "answered_at",
        "failure",
        "lost",
        "ready",
    )

    def __init__(self, node: MuxNode, loop: asyncio.AbstractEventLoop) -> None:
        self._node = node
        self._loop = loop
        self._clock = loop_clock(loop)
        self._reader = hiredis.Reader(replyError=reply_error)
        self._waiters: deque[PendingReply | None] = deque()
        self._setup: deque[tuple[str, Callable[[object], None] | None]] = deque()
        self._transport: asyncio.Transport | None = None
        # Scripts being loaded again after NOSCRIPT.
        self._loading: set[str] = set()
        # Writes held since the first of this turn (a burst), sent together.
        self._corked: list[bytes] | None = None
        self._corked_replies: list[PendingReply] = []
        # Entries of the FIFO ever added when the burst began (see unanswered()).
        self._cork_mark = 0
        # Retired (see retire()): replies still owed, and its slowest timeout.
        self._owed = 0
        self._patience = 0.0
        # Requests waiting for room in the window (see WINDOW), in order.
        self._backlog: deque[PendingReply] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        # Bytes read since the last complete reply.
        self._buffered = 0
        #: Why the connection is unusable (exception class, message), once it is.
        self.failure: tuple[type[Exception], str] | None = None
        #: Complete replies read so far, and when the last one was (loop time).
        self.answered = 0
        self.answered_at = 0.0
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

    # -- set-up --------------------------------------------------------------------

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

    # -- writing -------------------------------------------------------------------

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

    def send(self, fut: PendingReply) -> None:
        """Write ``fut``'s request now (or with this turn's burst), and time it
        from then; with the window full, once replies make room."""
        fut.conn = self
        if self._backlog or len(self._waiters) >= WINDOW:
            fut.deadline = math.inf  # not written: not timed
            self._backlog.append(fut)
            return
        self._send_now(fut)

    def _send_now(self, fut: PendingReply) -> None:
        command = fut.command
        assert command is not None
        corked = self._corked
        if corked is None:
            now = self._clock()
            self._transport.write(command.resp)  # type: ignore[union-attr]
            self._stamp(fut, now)
            if len(self._waiters) >= CORK_DEPTH:
                # Busy: hold the next writes of this turn, send them at its end
                # together (they would wait behind these replies anyway).
                self._cork()
        else:
            corked.append(command.resp)
            fut.deadline = math.inf  # timed once written (a held request's
            self._corked_replies.append(fut)  # queue deadline no longer applies)
        self._waiters.append(fut)

    def _stamp(self, fut: PendingReply, now: float) -> None:
        """``fut`` was written at ``now``: it is due a timeout later."""
        fut.sent_at = now
        fut.mark = self.answered
        deadline = min(now + fut.timeout, fut.not_after)
        fut.deadline = deadline
        if deadline < self._timer_at:
            self._arm(deadline)

    def _write(self, data: bytes) -> None:
        """Write ``data`` now, or with the held writes if a burst is on (see
        :data:`CORK_DEPTH`)."""
        corked = self._corked
        if corked is None:
            self._transport.write(data)  # type: ignore[union-attr]
        else:
            corked.append(data)

    def _cork(self) -> None:
        """Hold the writes from now to the end of this turn of the loop."""
        self._corked = []
        self._cork_mark = self.answered + len(self._waiters)
        self._loop.call_soon(self.uncork)

    def uncork(self) -> None:
        """Send the writes held since the first of this turn; their timeouts
        start now."""
        corked, self._corked = self._corked, None
        replies, self._corked_replies = self._corked_replies, []
        if corked and self.usable():
            now = self._clock()
            self._transport.write(b"".join(corked))  # type: ignore[union-attr]
            # _stamp() for each, with the timer armed once.
            answered = self.answered
            earliest = _INF
            for fut in replies:
                if not fut.done():
                    fut.sent_at = now
                    fut.mark = answered
                    deadline = now + fut.timeout
                    if deadline > fut.not_after:  # noqa: PLR1730 - a call fewer
                        deadline = fut.not_after
                    fut.deadline = deadline
                    if deadline < earliest:  # noqa: PLR1730
                        earliest = deadline
            if earliest < self._timer_at:
                self._arm(earliest)

    def _reload(self, fut: PendingReply) -> None:
        """Load ``fut``'s script (the node answered NOSCRIPT) and write the
        request again, behind the requests already in flight. One SCRIPT LOAD
        serves every request of a burst that got NOSCRIPT. The request keeps
        its mark and deadline: the node has answered since it was written."""
        command = fut.command
        assert command is not None
        assert command.script is not None
        script = command.script
        if script not in self._loading:
            self._loading.add(script)
            self._write(encode_command(("SCRIPT", "LOAD", script)))
            self._waiters.append(None)
            self._setup.append(("SCRIPT LOAD", self._loading.discard))
        self._write(command.resp)
        fut.reloaded = True  # once: a second NOSCRIPT is an error
        self._waiters.append(fut)

    # -- timing --------------------------------------------------------------------

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._due)

    def _due(self) -> None:
        # Two more turns of the loop before judging: on uvloop, timers run
        # before the loop reads its sockets, and a reply that arrived during a
        # stall of the client (a long turn, a collection) must count.
        self._timer = None
        self._timer_at = math.inf
        self._loop.call_soon(self._loop.call_soon, self._check)

    def _check(self) -> None:
        """Time out the requests now due, oldest first; see the module
        docstring for the rule."""
        if self.failure is not None:
            return
        now = self._clock()
        answered_at = self.answered_at
        next_at = math.inf
        for fut in list(self._waiters):  # a timed-out request's hook may send
            if fut is None or fut.done():
                continue
            deadline = fut.deadline
            if deadline > now:
                next_at = min(next_at, deadline)
                if deadline != math.inf:
                    break  # the rest were written later
                continue
            if now - deadline > fut.timeout * LATE and now < fut.not_after:
                # This check comes late: the client itself stalled (a long turn
                # of its own, a collection), and replies may be waiting unread.
                # Not the node's fault: judge it a timeout from now.
                fut.deadline = min(now + fut.timeout, fut.not_after)
                next_at = min(next_at, fut.deadline)
                continue
            if self.answered == fut.mark:
                # Stuck: this request timed out; the rest fail with the connection.
                _timed_out(fut)
                self.retire(
                    ConnectionError,
                    f"connection to {self._node.name} given up: no reply within "
                    f"{fut.timeout * 1000:.0f} ms",
                )
                return
            if (
                getattr(fut, "graces", 0) < BACKLOG_GRACE
                and now - answered_at < fut.timeout
                and now < fut.not_after
            ):
                # Busy, not stuck: the node answers this client's backlog.
                fut.graces = getattr(fut, "graces", 0) + 1
                fut.deadline = min(now + fut.timeout, fut.not_after)
                next_at = min(next_at, fut.deadline)
                continue
            _timed_out(fut)
        if next_at < self._timer_at:
            self._arm(next_at)

    # -- reading -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.failure is not None:
            self._read_owed(data)  # retired
            return
        reader = self._reader
        waiters = self._waiters
        try:
            reader.feed(data)
            reply = reader.gets()
            if reply is False:  # part of a reply
                self._buffered += len(data)
                if self._buffered > MAX_REPLY_BYTES:
                    self.fail(
                        ConnectionError,
                        f"connection to {self._node.name} aborted: a reply of "
                        f"over {MAX_REPLY_BYTES // 2**20} MB",
                    )
                return
            self._buffered = 0
            while reply is not False:
                # Counted as it is read (not at the end): a hook may write a
                # request, which is marked with the count (see _check).
                self.answered += 1
                fut = waiters.popleft()
                if fut is None:
                    if self._set_up_reply(reply):
                        break
                elif not fut.done():
                    if not isinstance(reply, Exception):
                        fut.set_result(reply)
                    elif (
                        isinstance(reply, NoScriptError)
                        and not getattr(fut, "reloaded", False)
                        and fut.command is not None
                        and fut.command.script is not None
                    ):
                        self._reload(fut)
                        reply = reader.gets()
                        continue
                    else:
                        fut.set_exception(reply)
                    # fut.settled(), inlined (once per reply)
                    fut.command = None
                    hook = fut.on_done
                    if hook is not None:
                        fut.on_done = None
                        try:
                            hook(fut)
                        except Exception:  # a bug: must not break the connection
                            logger.exception("handling a reply")
                reply = reader.gets()
        except (hiredis.HiredisError, IndexError) as exc:
            what = "an unexpected reply" if isinstance(exc, IndexError) else exc
            self.fail(ConnectionError, f"protocol error from {self._node.name}: {what}")
            return
        self.answered_at = self._clock()
        if self._backlog:
            self._refill()

    def _refill(self) -> None:
        """Write the requests waiting for room in the window, in order, as far
        as it has room (together: one write for many). One whose
        ``not_after`` has passed meanwhile times out unwritten."""
        backlog = self._backlog
        waiters = self._waiters
        room = WINDOW - len(waiters)
        if room <= 0 or not self.usable():
            return
        if self._corked is None:
            # Held and sent together at the end of this turn, by uncork().
            self._cork()
        now = self._clock()
        while backlog and room > 0:
            fut = backlog.popleft()
            if fut.done():
                continue
            if now >= fut.not_after:
                _timed_out(fut)
                continue
            self._send_now(fut)
            room -= 1

    def eof_received(self) -> bool:
        # Fail now, not at connection_lost: no request may be written meanwhile.
        self.fail(ConnectionError, f"connection to {self._node.name} closed by server")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._timer is not None:  # retired
            self._timer.cancel()
            self._timer = None
        why = f"{type(exc).__name__}: {exc}" if exc is not None else "closed by server"
        self.fail(ConnectionError, f"connection to {self._node.name} lost ({why})")
        self._node._conns.discard(self)
        if not self.lost.done():
            self.lost.set_result(None)

    def forget(self) -> None:
        """Stop counting this connection as open (its socket is gone)."""
        self._node._conns.discard(self)
        if not self.lost.done():
            self.lost.set_result(None)

    def fail(
        self, exc_type: type[Exception], message: str, *, keep_open: bool = False
    ) -> None:
        """Make the connection unusable: abort it (unless ``keep_open``), and
        fail every request still in flight on it with ``exc_type(message)``.
        Only the first call acts."""
        if self.failure is not None:
            return
        self.failure = (exc_type, message)
        self._node._forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.ready.done():
            self.ready.set_exception(exc_type(message))
            self.ready.exception()  # retrieved: the opener may be gone
        waiters, self._waiters = self._waiters, deque()
        waiters += self._backlog
        self._backlog = deque()
        self._corked_replies = []
        for fut in waiters:
            if fut is not None and not fut.done():
                fut.set_exception(exc_type(message))
                fut.settled()
        if self._transport is not None and not keep_open:
            self._transport.abort()

    # -- retiring --------------------------------------------------------------------

    def unanswered(self) -> int:
        """Requests written on this connection whose replies are not read yet
        (timed out or not): writes held for the end of this turn are not
        written yet."""
        if self.failure is not None:
            transport = self._transport
            closed = transport is None or transport.is_closing()
            return 0 if closed else self._owed
        if self._corked is not None:
            return self._cork_mark - self.answered
        return len(self._waiters)

    def patience(self) -> float:
        """The longest time a request still unanswered here was given: its
        timeout, or less if its ``not_after`` came first (0 if none is timed)."""
        if self.failure is not None:
            return self._patience
        longest = 0.0
        for fut in self._waiters:
            if fut is not None and fut.sent_at < _INF:
                given = min(fut.timeout, fut.not_after - fut.sent_at)
                if longest < given < _INF:
                    longest = given
        return longest

    def retire(self, exc_type: type[Exception], message: str) -> None:
        """The node looks stuck: fail every request on the connection now, as
        :meth:`fail` does (its callers go on; the next request opens another
        connection), but leave the socket open and read what comes, so that a
        node that only stalled still runs and answers what was written to it.
        Closed once all is answered, or after :data:`RETIRED_FOR` timeouts. Not
        for a node that is streaming a reply (bytes of it are read: it is
        aborted), nor beyond :data:`MAX_RETIRED` retired connections."""
        if self.failure is not None:
            return
        owed = self.unanswered()
        patience = self.patience()
        retired = sum(
            1
            for c in self._node._conns
            if c.failure is not None and c._transport is not None
        )
        keep = (
            owed > 0 and patience > 0 and not self._buffered and retired < MAX_RETIRED
        )
        # Releases waiting for room in the window, behind requests written
        # here that may still run: they fail with the rest, but are written
        # here too, behind those (see echo()). Read before fail() empties it.
        behind = (
            [
                fut.command.resp
                for fut in self._backlog
                if fut.command is not None and fut.command.repeatable
            ]
            if keep
            else []
        )
        self.fail(exc_type, message, keep_open=keep)
        if keep:
            self._owed = owed
            self._patience = patience
            self._timer = self._loop.call_later(patience * RETIRED_FOR, self.abort)
            for data in behind:
                self.echo(data)

    def echo(self, data: bytes) -> None:
        """Retired and still open: write ``data`` (a repeatable request) behind
        the requests written before, its reply to be dropped (see
        :func:`_echo_behind`)."""
        transport = self._transport
        if (
            self.failure is not None
            and self._owed > 0
            and transport is not None
            and not transport.is_closing()
        ):
            self._owed += 1
            transport.write(data)

    def _read_owed(self, data: bytes) -> None:
        """A retired connection: read (and drop) the replies owed to it; close
        it once they are all in."""
        reader = self._reader
        count = 0
        try:
            reader.feed(data)
            while reader.gets() is not False:
                count += 1
        except hiredis.HiredisError:
            self.abort()
            return
        if count:
            self.answered += count
            self._buffered = 0
            self._owed -= count
            if self._owed <= 0:
                self.abort()
        else:
            self._buffered += len(data)
            if self._buffered > MAX_REPLY_BYTES:
                self.abort()

    def abort(self, message: str | None = None) -> None:
        """Close the socket now, failing the requests still on it with
        ``message`` (a retired connection's too)."""
        if message is None:
            message = f"connection to {self._node.name} closed"
        self.fail(ConnectionError, message)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()


class MuxNode:
    """A :class:`~redlock_aio.Node` on one pipelined connection, written in
    RESP and read with hiredis.

    Connects lazily; requests made meanwhile wait (each under its timeout) and
    are written once the connection is up. AUTH is sent first and alone;
    SELECT, CLIENT SETNAME and the scripts' SCRIPT LOAD follow once it has
    succeeded, and no request is written before every one of them has (a
    failed AUTH or SELECT closes the connection). The scripts run by EVALSHA
    and are loaded again transparently after NOSCRIPT (a ``SCRIPT FLUSH`` or a
    restart).

    Error replies raise what redis-py raises for them (a ``ResponseError``
    subclass such as ``NoScriptError``, ``ReadOnlyError``, ``OutOfMemoryError``;
    ``AuthenticationError`` for NOAUTH/WRONGPASS); connection failures raise
    ``redis.exceptions.ConnectionError``; a request not answered in time
    raises :class:`TimeoutError`. Messages name the node, never a password.

    Commands marked urgent (renewals of held locks: ``extend``,
    ``extend_many``) go on a second connection, opened when first needed, so
    that auto-extension never waits behind the client's own burst of acquires
    on the first one. That is what keeps 1,000 held locks alive beside bursts
    of 20,000 acquires (benchmark scenario 8c); it costs one more connection
    per node and client, only for clients that extend.

    Until answered once, a new connection also asks ``CONFIG GET
    maxmemory-policy`` for :attr:`facts` (a warning if keys may be evicted).

    Build one with :meth:`from_url`. :meth:`aclose` is final and idempotent.

    :ivar facts: what the server said about itself.
    :ivar connects: connections opened so far, the urgent lane's not counted
        (for tests and monitoring).
    """

    __slots__ = (
        "_channels",
        "_closed",
        "_conn",
        "_connecting",
        "_conns",
        "_host",
        "_lane",
        "_opening",
        "_path",
        "_port",
        "_queue_timer",
        "_queued",
        "_setup",
        "_ssl",
        "_stamping",
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
        if path is None:
            try:
                check_host(host)
            except ValueError as exc:
                raise ConfigurationError(f"MuxNode: {exc}") from None
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
        self._init_state()

    def _init_state(self) -> None:
        """The state of a node that has not connected yet."""
        self._conn: _Connection | None = None
        self._conns: set[_Connection] = set()
        self._connecting: asyncio.Task[_Connection] | None = None
        self._opening: _Connection | None = None
        # Requests made while no connection is up, in order.
        self._queued: list[PendingReply] = []
        self._queue_timer: asyncio.TimerHandle | None = None
        self._stamping = False
        self._closed = False
        self._channels: Channels | None = None
        self._lane: MuxNode | None = None
        self.connects = 0

    def _urgent_lane(self) -> MuxNode:
        """The node's second connection, for urgent commands (see
        :meth:`submit`): a node of its own, of the same class (a subclass's way
        of connecting applies to it too), to the same server with the same
        set-up, made (and connected) when first needed."""
        lane = self._lane
        if lane is None:
            lane = self._lane = copy.copy(self)
            lane._init_state()
        return lane

    @classmethod
    def from_url(cls, url: str) -> MuxNode:
        """A node for a ``redis://[[user]:password@]host[:port][/db]``,
        ``rediss://...`` (TLS) or ``unix:///path/to/redis.sock[?db=N]`` URL
        (its parameters: :func:`~._url.mux_params`).

        :raises ConfigurationError: the URL is invalid or asks for something
            this transport does not do (no I/O has been done, except reading
            TLS certificate files).
        """
        p = mux_params(url)
        return cls(
            host=p.host,
            port=p.port,
            path=p.path,
            db=p.db,
            username=p.username,
            password=p.password,
            client_name=p.client_name,
            ssl_context=p.ssl_context,
            name=p.name,
            identity=p.identity,
        )

    # -- the Node protocol ---------------------------------------------------------

    def submit(
        self,
        command: Command,
        *,
        timeout: float,
        after: asyncio.Future[object] | None = None,
        on_done: OnDone | None = None,
        not_after: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> asyncio.Future[object]:
        if loop is None:
            loop = _get_running_loop()
        fut = PendingReply(loop=loop)
        fut.command = command
        fut.node = self
        fut.timeout = timeout
        fut.not_after = limit = _INF if not_after is None else not_after
        fut.on_done = on_done
        conn = self._conn
        if (
            conn is not None
            and not command.urgent
            and (after is None or _answered(after, command))
            and conn.failure is None
            and conn._loop is loop
            and not conn._backlog
        ):
            # The common case, in one frame (it is most of a lock's client
            # CPU): an open connection of this loop, room in the window. What
            # _send_or_queue, send, _send_now and _stamp do.
            # Not None: a connection loses its transport only with a failure.
            transport: asyncio.Transport = conn._transport  # type: ignore[assignment]
            waiters = conn._waiters
            depth = len(waiters)
            if depth < WINDOW and not transport.is_closing():
                fut.conn = conn
                corked = conn._corked
                if corked is not None:
                    # A burst is on: written with this turn's others at its
                    # end, and timed from then (uncork() stamps it).
                    fut.mark = -1
                    fut.sent_at = fut.deadline = _INF
                    corked.append(command.resp)
                    conn._corked_replies.append(fut)
                    waiters.append(fut)
                    return fut
                now = conn._clock()
                transport.write(command.resp)
                fut.sent_at = now
                fut.mark = conn.answered
                deadline = now + timeout
                if deadline > limit:  # noqa: PLR1730 - min() is a call more
                    deadline = limit
                fut.deadline = deadline
                if deadline < conn._timer_at:
                    conn._arm(deadline)
                waiters.append(fut)
                if depth >= CORK_DEPTH:
                    conn._cork()
                return fut
        fut.conn = None
        fut.mark = -1
        fut.sent_at = _INF
        fut.deadline = _INF
        if (
            after is not None
            and (conn is None or command.urgent)  # else _answered() was asked
            and command.repeatable
            and after.done()
        ):
            _echo_behind(after, command)
        # A renewal of held locks goes on a connection of its own (the urgent
        # lane), so that it never waits behind this client's own burst on the
        # main one, whose replies come strictly in order.
        target = self._urgent_lane() if command.urgent and not self._closed else self
        if (
            after is not None
            and not after.done()
            and (command.urgent or self._lane_busy())
        ):
            # Ordered after a request that may be on the other connection: sent
            # once that one is answered (untimed until then: not written).
            # Otherwise one connection's order keeps ``after`` first.
            after.add_done_callback(partial(_send_when_due, target, fut))
            return fut
        return target._send_or_queue(fut, loop)

    def _lane_busy(self) -> bool:
        """Whether the urgent lane may have a request in flight."""
        lane = self._lane
        if lane is None:
            return False
        conn = lane._conn
        return bool(lane._queued) or (
            conn is not None and bool(conn._waiters or conn._backlog)
        )

    def _send_or_queue(
        self, fut: PendingReply, loop: asyncio.AbstractEventLoop
    ) -> PendingReply:
        fut.node = self
        conn = self._conn
        if conn is not None and conn.usable():
            if conn._loop is not loop:
                fut.set_exception(
                    RedlockError(
                        f"{self.name}: this node's connection belongs to another "
                        "event loop; create one client per event loop"
                    )
                )
                fut.settled()
            else:
                conn.send(fut)
        else:
            self._queue(fut, loop)
        return fut

    async def execute(self, *args: Arg) -> object:
        """Any other command (``PING``, ``INFO``, ``CONFIG GET``, ...): the raw
        RESP2 reply (bytes, int, None or a list; status replies as bytes). No
        timeout but the connection's own failure detection."""
        return await self.submit(_commands.call(*args), timeout=math.inf)

    async def aclose(self) -> None:
        """Close the connection, failing requests still in flight, and wait
        until its socket is released. The node cannot be used afterwards.
        Idempotent."""
        self._closed = True
        closed = f"{self.name}: the node was closed"
        lane = self._lane
        mine = [self] if lane is None else [self, lane]
        try:
            await _drain([conn for node in mine for conn in node._conns])
        finally:  # cancelled or not, no socket is left open
            for node in mine:
                for conn in list(node._conns):
                    conn.abort(closed)
        if lane is not None:
            await lane.aclose()
        if self._channels is not None:
            await leave_channels(self._channels_key(), self._channels)
        task = self._connecting
        if task is not None:
            task.cancel()
            await asyncio.wait((task,))
        self._fail_queued(ConnectionError, closed)
        conns = list(self._conns)
        for conn in conns:
            conn.abort(closed)
        for conn in conns:
            await asyncio.shield(conn.lost)

    def __repr__(self) -> str:
        return f"MuxNode({self.name})"

    # -- connecting ------------------------------------------------------------------

    def _queue(self, fut: PendingReply, loop: asyncio.AbstractEventLoop) -> None:
        """Hold ``fut`` until a connection is up (each request under its own
        timeout meanwhile), opening one if none is being opened."""
        if self._closed:
            fut.set_exception(ConnectionError(f"{self.name}: the node was closed"))
            fut.settled()
            return
        queued = self._queued
        if not self._stamping:
            # Timed from the end of this turn of the loop: a burst made in a
            # long turn of the client's own is not charged to the node.
            self._stamping = True
            loop.call_soon(self._stamp_queued)
        queued.append(fut)
        if self._connecting is None:
            task = loop.create_task(self._open())
            self._connecting = task
            task.add_done_callback(self._connect_done)

    def _stamp_queued(self) -> None:
        """Start the timeouts of the requests held this turn."""
        self._stamping = False
        now = asyncio.get_running_loop().time()
        earliest = math.inf
        for fut in self._queued:
            if fut.deadline == math.inf and not fut.done():
                fut.deadline = min(now + fut.timeout, fut.not_after)
                earliest = min(earliest, fut.deadline)
        if earliest != math.inf and self._queue_timer is None:
            self._queue_timer = asyncio.get_running_loop().call_at(
                earliest, self._queue_due
            )

    def _queue_due(self) -> None:
        """Fail the held requests now due; with none left, a connection still
        waiting for its set-up replies (AUTH) is stuck: abort it."""
        self._queue_timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        waiting = [f for f in self._queued if not f.done()]
        for fut in waiting:
            if now - fut.deadline > fut.timeout * LATE and now < fut.not_after:
                fut.deadline = min(now + fut.timeout, fut.not_after)  # see _check
            elif fut.deadline <= now:
                err = TimeoutError(
                    f"no connection to {self.name} within {fut.timeout * 1000:.0f} ms"
                )
                fut.set_exception(err)
                fut.settled()
        left = [f for f in waiting if not f.done()]
        self._queued = left
        if left:
            when = min(f.deadline for f in left)
            if when != math.inf:
                self._queue_timer = loop.call_at(when, self._queue_due)
        else:
            self._abandon_connect()

    def _cancelled(self, fut: PendingReply) -> None:
        """A request was cancelled by its caller. If nothing at all has been
        answered on its connection since it was written, the node is stuck:
        abort, failing the requests behind it, rather than let them pile up.
        If it was held for a connection and nobody else waits for one, stop
        opening it."""
        conn = fut.conn
        if conn is not None:
            if fut.mark < 0:
                return  # not written yet: its reply, if any comes, is dropped
            if conn.answered == fut.mark and conn.failure is None:
                conn.retire(
                    ConnectionError,
                    f"connection to {self.name} given up: no reply before a request "
                    "was cancelled",
                )
        elif fut in self._queued and all(f.done() for f in self._queued):
            self._queued = []
            self._abandon_connect()

    def _abandon_connect(self) -> None:
        """Nobody waits for the connection any more: one still connecting, or
        waiting for its set-up replies (AUTH), is stuck. Abandon it; the next
        request opens another."""
        task, self._connecting = self._connecting, None
        if self._queue_timer is not None:
            self._queue_timer.cancel()
            self._queue_timer = None
        opening = self._opening
        if opening is not None:
            opening.fail(
                ConnectionError,
                f"connection to {self.name} aborted: no reply to its set-up "
                "(AUTH, SELECT) within the per-node timeout",
            )
        elif task is not None:
            task.cancel()

    def _flush(self, conn: _Connection) -> None:
        """Write the requests held while connecting, in order."""
        queued, self._queued = self._queued, []
        if self._queue_timer is not None:
            self._queue_timer.cancel()
            self._queue_timer = None
        for fut in queued:
            if not fut.done():
                conn.send(fut)

    def _fail_queued(self, exc_type: type[Exception], message: str) -> None:
        queued, self._queued = self._queued, []
        if self._queue_timer is not None:
            self._queue_timer.cancel()
            self._queue_timer = None
        for fut in queued:
            if not fut.done():
                fut.set_exception(exc_type(message))
                fut.settled()

    def _connect_done(self, task: asyncio.Task[_Connection]) -> None:
        exc = None if task.cancelled() else task.exception()  # retrieved either way
        if self._connecting is not task:
            return  # abandoned (see _queue_due): newer requests are not its own
        self._connecting = None
        if exc is not None:
            exc_type = (
                type(exc) if isinstance(exc, ConnectionError) else ConnectionError
            )
            self._fail_queued(exc_type, str(exc))
        elif task.cancelled():
            self._fail_queued(ConnectionError, f"{self.name}: the node was closed")

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()

        made: list[_Connection] = []

        def factory() -> _Connection:
            made.append(_Connection(self, loop))
            return made[-1]

        try:
            conn = await self._create(factory)
        except BaseException as exc:
            # Given up while connecting (cancelled, refused): a protocol made
            # meanwhile may never hear connection_lost (uvloop closes the
            # socket of a cancelled connect without it): let it go here.
            for half in made:
                half.fail(ConnectionError, f"connection to {self.name} abandoned")
                half.forget()
            if isinstance(exc, OSError):  # refused, unreachable, TLS failure
                raise ConnectionError(
                    f"Error connecting to {self.name}: {exc}"
                ) from exc
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
                raise
            finally:
                self._opening = None
        if not conn.usable():
            exc_type, message = conn.failure or (ConnectionError, "lost")
            raise exc_type(message)
        self._conn = conn
        # At once, before anyone else can write on it: the held requests first.
        self._flush(conn)
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

    def _saw_policy(self, reply: object) -> None:
        if isinstance(reply, ResponseError):  # CONFIG renamed or denied by ACL
            self.facts.eviction_checked = True
            logger.debug("node %s: cannot read maxmemory-policy: %s", self.name, reply)
        elif not isinstance(reply, Exception):  # else (NOAUTH, LOADING): next time
            self.facts.saw_eviction_policy(reply)

    def _forget(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None

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
