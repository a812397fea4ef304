"""Waiting for a release: waiters subscribe (:class:`~._node.Notifier`) to the
release channel of the key they wait for, and the first in line in this process
retries when it fires.

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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Sequence

    from ._node import Notifier

logger = logging.getLogger("redlock_aio")


class _Line:
    """The waiters of one process for one key, in arrival order. A release
    wakes only the first of them (every node announces it, and every client of
    the process may be subscribed: the released token tells the repeats), so
    that a process sends one attempt per release, not one per waiting task."""

    __slots__ = ("seen", "waiters")

    def __init__(self) -> None:
        # In arrival order; a dict, so that leaving the line is O(1).
        self.waiters: dict[Wakeup, None] = {}
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


class Closing:
    """A signal set once, when the client's ``aclose()`` begins: it wakes every
    acquire sleeping between attempts.

    Sleepers register in a set, so joining and leaving cost O(1). A done
    callback on one shared future would not: ``Future.remove_done_callback``
    scans the future's list, so 100,000 acquires in backoff leaving one by one
    cost O(n^2) (minutes of a blocked event loop; benchmark scenario 7).
    """

    __slots__ = ("_sleepers", "is_set")

    def __init__(self) -> None:
        self._sleepers: set[asyncio.Future[None]] = set()
        self.is_set = False

    def set(self) -> None:
        """Set it, waking every sleeper. Idempotent."""
        self.is_set = True
        sleepers, self._sleepers = self._sleepers, set()
        for waiter in sleepers:
            _resolve(waiter)

    async def sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or until set."""
        if self.is_set:
            return
        waiter = asyncio.get_running_loop().create_future()
        timer = waiter.get_loop().call_later(delay, _resolve, waiter)
        try:
            await self.wake_on_set(waiter)
        finally:
            timer.cancel()

    async def wake_on_set(self, waiter: asyncio.Future[None]) -> None:
        """Await ``waiter``, resolved early if the signal is set meanwhile."""
        if self.is_set:
            _resolve(waiter)
        sleepers = self._sleepers
        sleepers.add(waiter)
        try:
            await waiter
        finally:
            sleepers.discard(waiter)


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
        line.waiters[self] = None

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

    async def wait(self, delay: float, closing: Closing | None = None) -> None:
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
            try:
                if closing is None:
                    await waiter
                else:
                    await closing.wake_on_set(waiter)
            finally:
                timer.cancel()
                self._waiter = None
        self.signalled = False

    def close(self) -> None:
        """Leave the line (passing on a wake-up not used) and unsubscribe."""
        line = self._line
        del line.waiters[self]
        if self.signalled:
            line.wake_first()
        if not line.waiters:
            _lines.pop((self._loop, self._channel), None)
        for node in self._nodes:
            node.unsubscribe(self._channel, self._heard)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
