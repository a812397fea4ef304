"""The handle of one acquisition: :class:`Lock`, its state, and nothing above it.

A lock's operations (extend, release) are its manager's, the
:class:`~._redlock.AsyncRedlock` that made it; this module knows the manager
only through the small :class:`LockManager` protocol, so that imports flow one
way.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TYPE_CHECKING, Any, Protocol, final

from ._config import short_repr

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import TracebackType

    from ._config import LeaseTerms
    from ._quorum import NodeOutcome

logger = logging.getLogger("redlock_aio")


class LossWatcher(Protocol):
    """What watches a lock for its block (the ``lock()`` context): told when
    the lock is lost, after the ``on_lost`` callbacks."""

    def _lost(self, lock: Lock) -> None: ...


class OutcomeTable(Protocol):
    """The outcomes of one request over several locks (a batch extension),
    lock by lock."""

    def row(self, k: int) -> Sequence[NodeOutcome]:
        """Per node, lock ``k``'s outcome so far (live)."""
        ...


class LockManager(Protocol):
    """What a :class:`Lock` needs of the client that made it."""

    def clock(self) -> float: ...

    async def _extend(self, lock: Lock, ttl: float | None) -> float: ...

    async def _release(self, lock: Lock) -> None: ...


@final
class Lock:
    """One acquisition of a resource: its token, and until when it is known held.

    A lock is not re-entrant and belongs to whoever holds this object, whatever
    task or thread: the token lives here, never in a thread-local or global.
    Validity is computed locally on the monotonic clock; there is deliberately no
    network "is it still locked?" check, which could wrongly say yes.

    :ivar resource: the resource as given to ``acquire``.
    :ivar keys: the Redis keys it holds (prefix + resource): one today.
    :ivar token: the random value only this holder knows.
    :ivar ttl: the TTL of the last successful acquire or extend, in seconds.
    :ivar valid_until: monotonic time (the AsyncRedlock's clock) until which the
        lock is known held.
    """

    __slots__ = (
        "__weakref__",
        "_last_requests",
        "_lost_callbacks",
        "_lost_reason",
        "_lost_watcher",
        "_manager",
        "_outcomes",
        "_released",
        "_row",
        "_terms",
        "keys",
        "resource",
        "token",
        "ttl",
        "valid_until",
    )

    def __init__(
        self,
        manager: LockManager,
        resource: str | bytes,
        keys: tuple[bytes, ...],
        token: bytes,
        terms: LeaseTerms,
        valid_until: float,
        last_requests: Sequence[asyncio.Future[Any] | None],
        outcomes: Sequence[NodeOutcome],
    ) -> None:
        self._manager = manager
        self.resource = resource
        self.keys = keys
        self.token = token
        self.ttl = terms.ttl
        self._terms = terms
        self.valid_until = valid_until
        # Per node, the future of this lock's latest request (None: answered,
        # nothing to wait for): the next one is ordered after it.
        self._last_requests = last_requests
        # Per node, the outcome of the latest request (live: a late answer
        # shows), or with ``_row`` >= 0 the batch it was row ``_row`` of.
        self._outcomes: Sequence[NodeOutcome] | OutcomeTable = outcomes
        self._row = -1
        self._released = False
        self._lost_reason: str | None = None
        self._lost_callbacks: list[Callable[[Lock], object]] | None = None
        # The block's watcher, if a lock() block holds it: a slot, not an
        # on_lost callback (a bound method in a list, two more objects for
        # the garbage collector to scan per held lock).
        self._lost_watcher: LossWatcher | None = None

    @property
    def key(self) -> bytes:
        """The Redis key (prefix + resource)."""
        return self.keys[0]

    @property
    def outcomes(self) -> tuple[NodeOutcome, ...]:
        """What each node answered to the latest acquire, extend or release.
        A node slower than the quorum shows ``pending`` until it answers; its
        late answer is shown then, but it did not count."""
        return tuple(self._latest_outcomes())

    def _latest_outcomes(self) -> Sequence[NodeOutcome]:
        """Per node, the outcome of this lock's latest request, as it comes."""
        # (No typing.cast(): a call per release, at run time.)
        if self._row < 0:
            return self._outcomes  # type: ignore[return-value]  # a sequence
        return self._outcomes.row(self._row)  # type: ignore[union-attr]  # a table

    def remaining(self) -> float:
        """Seconds of validity left (0.0 once expired, lost or released)."""
        if self._released or self._lost_reason is not None:
            return 0.0
        return max(0.0, self.valid_until - self._manager.clock())

    @property
    def held(self) -> bool:
        """True while the lock is known held: not released, not lost, not expired."""
        return self.remaining() > 0.0

    @property
    def lost(self) -> bool:
        """True once the lock is known lost (an extension failed for good, or its
        validity ran out before it was released)."""
        if (
            self._lost_reason is None
            and not self._released
            and self.valid_until <= self._manager.clock()
        ):
            self._mark_lost("its validity ran out")
        return self._lost_reason is not None

    @property
    def released(self) -> bool:
        return self._released

    async def extend(self, ttl: float | None = None) -> float:
        """Set the lock's TTL again on every node; needs a quorum.

        The new validity is counted from the start of this call. A lock that has
        expired, was lost or released is never revived.

        :param ttl: the new TTL in seconds (default: the lock's current ``ttl``).
        :return: the seconds of validity now left.
        :raises LockLost: the lock had expired or is gone from a quorum of nodes.
        :raises ExtendError: no quorum extended it; it stays valid until
            ``valid_until``.
        :raises ConfigurationError: ``ttl`` is invalid.
        """
        return await self._manager._extend(self, ttl)

    async def release(self) -> None:
        """Delete the lock's key on every node where it still holds this token.

        Shielded from cancellation and bounded by the per-node timeout. It
        returns once every node that answered the lock's latest request (by the
        time the others are done) has confirmed, a quorum at least; a node that
        was slow or failing gets its release in the background, after that
        request, so a late key is still deleted and a slow node does not slow
        down every release. Releasing twice is a no-op.

        :raises ReleaseError: fewer than a quorum confirmed; the lock stays
            releasable, and its keys expire by their TTL.
        """
        await self._manager._release(self)

    async def _settled(self) -> None:
        """Until this lock's latest requests have all been answered or timed
        out (a quorum decides before the slowest node answers): for tests."""
        pending = [f for f in self._last_requests if f is not None and not f.done()]
        if pending:
            await asyncio.wait(pending)

    def on_lost(self, callback: Callable[[Lock], object]) -> None:
        """Call ``callback(lock)`` once, when the lock becomes known lost."""
        if self._lost_reason is not None:
            callback(self)
        elif self._lost_callbacks is None:
            self._lost_callbacks = [callback]
        else:
            self._lost_callbacks.append(callback)

    def _forget_callback(self, callback: Callable[[Lock], object]) -> None:
        """Drop an on_lost callback: its ``async with`` block has ended, and
        must not be kept alive by it."""
        callbacks = self._lost_callbacks
        if callbacks is not None and callback in callbacks:
            callbacks.remove(callback)

    def _mark_lost(self, reason: str, *, warn: bool = True) -> None:
        if self._lost_reason is not None or self._released:
            return
        self._lost_reason = reason
        if warn:
            logger.warning(
                "lock %s lost: %s [%s]",
                short_repr(self.resource),
                reason,
                "; ".join(map(str, self._latest_outcomes())),
            )
        watcher, self._lost_watcher = self._lost_watcher, None
        callbacks, self._lost_callbacks = self._lost_callbacks, None
        if watcher is not None:  # last, as when it was an on_lost callback
            callbacks = [*(callbacks or ()), watcher._lost]
        for callback in callbacks or ():
            try:
                callback(self)
            except Exception:
                logger.exception(
                    "on_lost callback for %s failed", short_repr(self.resource)
                )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()

    def __repr__(self) -> str:
        if self._released:
            state = "released"
        elif self._lost_reason is not None:
            state = "lost"
        else:
            state = f"valid for {self.remaining():.3f} s"
        return f"<Lock {short_repr(self.resource)} {state}>"
