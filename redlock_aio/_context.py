"""``async with redlock.lock(...)``: hold a lock for a block, keep it alive in
the background, and cancel the block if the lock cannot be kept.

The body runs inside an anyio cancel scope. With auto-extension the lock is
registered with the AsyncRedlock's :class:`~._keeper.Keeper`, which has every
held lock extended in batches and marks a lock lost, before its local
deadline, when it cannot keep it. Without, a timer marks the lock lost when its
validity runs out. A lost lock cancels that scope, so the body stops at its next
await and the block raises :class:`LockLost`. A cancellation from outside (the
caller's own timeout) still propagates as itself. No task per lock either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, final

import anyio

from ._config import short_repr
from ._errors import LockLost, RedlockError, ReleaseError

if TYPE_CHECKING:
    from collections.abc import Awaitable
    from types import TracebackType

    from ._keeper import Keeper, Registration
    from ._lock import Lock

LostCallback = Callable[["Lock"], object]


@final
class LockContext:
    """The async context manager returned by :meth:`AsyncRedlock.lock`.

    ``__aenter__`` acquires (as :meth:`AsyncRedlock.acquire`) and returns the
    :class:`Lock`. ``__aexit__`` stops keeping it, releases (shielded, even when
    the body failed or was cancelled), then raises :class:`LockLost` if the lock
    was lost while the block ran. Single use.

    :param acquire: acquires the lock (the AsyncRedlock's ``acquire``, its
        arguments bound).
    :param keeper: the AsyncRedlock's keeper (created on first use).
    :param clock: the AsyncRedlock's clock.
    """

    def __init__(
        self,
        acquire: Callable[[], Awaitable[Lock]],
        keeper: Callable[[], Keeper],
        clock: Callable[[], float],
        *,
        auto_extend: bool,
        cancel_on_lost: bool,
        on_lost: LostCallback | None,
    ) -> None:
        # Both dropped once entered: a held lock's block keeps fewer objects
        # for the garbage collector to scan.
        self._acquire: Callable[[], Awaitable[Lock]] | None = acquire
        self._keeper_of: Callable[[], Keeper] | None = keeper
        self._clock = clock
        self._auto_extend = auto_extend
        self._cancel_on_lost = cancel_on_lost
        self._on_lost = on_lost
        self._lock: Lock | None = None
        self._keeper: Keeper | None = None
        self._registration: Registration | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._scope: anyio.CancelScope | None = None
        self._entered = False

    async def __aenter__(self) -> Lock:
        if self._entered:
            raise RedlockError("a lock(...) context can be entered only once")
        self._entered = True
        acquire, self._acquire = self._acquire, None  # held no longer than needed
        assert acquire is not None
        lock = await acquire()
        # No await from here to the body: a cancellation cannot strand the lock.
        self._lock = lock
        self._scope = anyio.CancelScope()
        if self._on_lost is not None:
            lock.on_lost(self._on_lost)
        lock._lost_watcher = self
        keeper_of, self._keeper_of = self._keeper_of, None
        if self._auto_extend:
            assert keeper_of is not None
            self._keeper = keeper_of()
            self._registration = self._keeper.add(lock)
        else:
            self._watch()
        self._scope.__enter__()
        return lock

    def _stop(self) -> None:
        """Stop keeping the lock: the block ended, or the lock is lost (maybe
        by aclose()) and needs no keeping."""
        registration, self._registration = self._registration, None
        if registration is not None and self._keeper is not None:
            self._keeper.remove(registration)
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _watch(self) -> None:
        """Without auto-extension: mark the lock lost when its validity runs out
        (extended by hand or not), so the body does not run on unprotected. A
        timer, re-armed while the holder extends the deadline by hand."""
        self._timer = None
        lock = self._lock
        assert lock is not None
        if lock._released or lock._lost_reason is not None:
            return
        left = lock.valid_until - self._clock()
        if left > 0:
            self._timer = asyncio.get_running_loop().call_later(left, self._watch)
        else:
            lock._mark_lost("its validity ran out before the block ended")

    def _lost(self, lock: Lock) -> None:
        """The lock is lost: stop keeping it, and cancel the body (unless
        ``cancel_on_lost=False``)."""
        self._stop()
        if self._cancel_on_lost and self._scope is not None:
            self._scope.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        lock, scope = self._lock, self._scope
        assert lock is not None
        assert scope is not None
        # True when the exception was our own cancellation of the body.
        swallowed = bool(scope.__exit__(exc_type, exc, tb))
        self._stop()
        lock._lost_watcher = None  # it points back here
        if self._on_lost is not None:
            lock._forget_callback(self._on_lost)
        self._scope = None
        lost = lock.lost
        # The block's outcome is known: release in the next turn of the loop.
        # When many blocks end in one turn (tasks woken together), each one
        # then learns its outcome before any of them does the work of a
        # release; else the last would resume only after all the others'
        # releases, and find a lock that ran out meanwhile (100,000 blocks
        # ending at once: seconds in one turn, benchmark scenario 7).
        cancelled: asyncio.CancelledError | None = None
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError as exc_cancel:
            cancelled = exc_cancel  # released all the same, then re-raised
        try:
            await lock.release()
        except ReleaseError as release_error:
            if cancelled is not None:
                raise cancelled from release_error
            if exc is None or swallowed:
                if lost:
                    raise _lost_error(lock) from release_error
                raise
            _note(exc, f"and releasing the lock failed: {release_error}")
            return False
        if cancelled is not None:
            raise cancelled
        if lost and (exc is None or swallowed):
            raise _lost_error(lock) from (exc if swallowed else None)
        if lost and exc is not None:
            _note(
                exc,
                f"the lock on {short_repr(lock.resource)} was lost: {lock._lost_reason}",
            )
        return swallowed


def _lost_error(lock: Lock) -> LockLost:
    return LockLost(
        f"lock {short_repr(lock.resource)} was lost while the block ran: {lock._lost_reason}"
    )


def _note(exc: BaseException, text: str) -> None:
    add_note = getattr(exc, "add_note", None)
    if add_note is not None:
        add_note(text)
