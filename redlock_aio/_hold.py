"""``async with redlock.lock(...)``: hold a lock for a block, re-extending it from
a background task, and cancel the block if the lock cannot be kept.

The body runs inside an anyio cancel scope. The keeper task extends the lock
every third of its TTL, retrying within the remaining validity; if it cannot
keep it before the local deadline, it marks the lock lost and cancels that
scope, so the body stops at its next await and the block raises
:class:`LockLost`. A cancellation from outside (the caller's own timeout) still
propagates as itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, final

import anyio

from ._config import show
from ._errors import ExtendError, LockLost, RedlockError, ReleaseError
from ._round import wait_tasks_shielded

if TYPE_CHECKING:
    from types import TracebackType

    from ._redlock import AsyncRedlock, Lock

logger = logging.getLogger("redlock_aio")

LostCallback = Callable[["Lock"], object]

#: Extend when this share of the TTL has passed since the last extension.
EXTEND_EVERY = 1 / 3


@final
class LockContext:
    """The async context manager returned by :meth:`AsyncRedlock.lock`.

    ``__aenter__`` acquires (as :meth:`AsyncRedlock.acquire`) and returns the
    :class:`Lock`. ``__aexit__`` stops the keeper, releases (shielded, even when
    the body failed or was cancelled), then raises :class:`LockLost` if the lock
    was lost while the block ran. Single use.
    """

    def __init__(
        self,
        redlock: AsyncRedlock,
        resource: str | bytes,
        *,
        ttl: float | None,
        blocking: bool,
        timeout: float | None,
        auto_extend: bool,
        cancel_on_lost: bool,
        on_lost: LostCallback | None,
    ) -> None:
        self._redlock = redlock
        self._resource = resource
        self._ttl = ttl
        self._blocking = blocking
        self._timeout = timeout
        self._auto_extend = auto_extend
        self._cancel_on_lost = cancel_on_lost
        self._on_lost = on_lost
        self._lock: Lock | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._scope: anyio.CancelScope | None = None
        self._entered = False

    @property
    def lock_object(self) -> Lock | None:
        """The :class:`Lock` once entered."""
        return self._lock

    async def __aenter__(self) -> Lock:
        if self._entered:
            raise RedlockError("a lock(...) context can be entered only once")
        self._entered = True
        lock = await self._redlock.acquire(
            self._resource,
            ttl=self._ttl,
            blocking=self._blocking,
            timeout=self._timeout,
        )
        # No await from here to the body: a cancellation cannot strand the lock.
        self._lock = lock
        self._scope = anyio.CancelScope()
        if self._on_lost is not None:
            lock.on_lost(self._on_lost)
        if self._cancel_on_lost:
            lock.on_lost(lambda _: self._cancel_body())
        self._keeper = self._redlock._spawn(
            self._keep(lock) if self._auto_extend else self._watch(lock)
        )
        lock.on_lost(lambda _: self._stop_keeper())
        self._scope.__enter__()
        return lock

    def _stop_keeper(self) -> None:
        """A lost lock needs no keeper (it may have been lost by aclose())."""
        keeper = self._keeper
        if keeper is not None and keeper is not _current_task():
            keeper.cancel()

    def _cancel_body(self) -> None:
        if self._scope is not None:
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
        keeper = self._keeper
        if keeper is not None:
            keeper.cancel()
            await wait_tasks_shielded([keeper])
            if not keeper.cancelled() and keeper.exception() is not None:
                logger.error("lock keeper failed", exc_info=keeper.exception())
        lost = lock.lost
        try:
            await lock.release()
        except ReleaseError as release_error:
            if exc is None or swallowed:
                if lost:
                    raise _lost_error(lock) from release_error
                raise
            _note(exc, f"and releasing the lock failed: {release_error}")
            return False
        if lost and (exc is None or swallowed):
            raise _lost_error(lock) from (exc if swallowed else None)
        if lost and exc is not None:
            _note(
                exc, f"the lock on {show(lock.resource)} was lost: {lock._lost_reason}"
            )
        return swallowed

    async def _keep(self, lock: Lock) -> None:
        """Extend ``lock`` every third of its TTL until cancelled; mark it lost
        (which cancels the body) if it cannot be kept before its deadline."""
        redlock = self._redlock
        clock = redlock.clock
        next_at = clock() + lock.ttl * EXTEND_EVERY
        while True:
            await asyncio.sleep(max(0.0, next_at - clock()))
            started = clock()
            try:
                await lock.extend()
            except LockLost:
                return  # extend() marked it lost
            except ExtendError:
                # Not this time; try again while an attempt can still finish in time.
                left = lock.valid_until - clock()
                attempt_bound = redlock.settings.node_timeout_for(lock.ttl)
                gap = min(lock.ttl * 0.05, 0.25)
                if left <= attempt_bound + gap:
                    lock._mark_lost(
                        "no quorum extended it before its validity would run out"
                    )
                    return
                next_at = clock() + gap
                continue
            except Exception as exc:  # a bug, not a node failure: do not hold silently
                lock._mark_lost(f"auto-extension failed: {exc!r}")
                raise
            next_at = started + lock.ttl * EXTEND_EVERY

    async def _watch(self, lock: Lock) -> None:
        """Without auto-extension: mark the lock lost when its validity runs out
        (extended by hand or not), so the body does not run on unprotected."""
        clock = self._redlock.clock
        # Not a busy wait: each sleep lasts until the current deadline, which
        # moves only when the holder extends by hand.
        while (left := lock.valid_until - clock()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(left)
        lock._mark_lost("its validity ran out before the block ended")


def _current_task() -> asyncio.Task[object] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop
        return None


def _lost_error(lock: Lock) -> LockLost:
    return LockLost(
        f"lock {show(lock.resource)} was lost while the block ran: {lock._lost_reason}"
    )


def _note(exc: BaseException, text: str) -> None:
    add_note = getattr(exc, "add_note", None)
    if add_note is not None:
        add_note(text)
