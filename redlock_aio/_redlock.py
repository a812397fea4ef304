"""The Redlock algorithm: :class:`AsyncRedlock` (nodes, settings, acquire with
retries, extend, release) and :class:`Lock`, the handle of one acquisition.

Acquire, top to bottom:

1. A fresh 20-byte token from :mod:`secrets` for each attempt.
2. ``SET key token NX PX ttl`` to every node at once, each under the per-node
   timeout; the attempt is decided as soon as a quorum said yes or cannot.
3. The lock holds if a quorum said yes and ``validity = ttl - elapsed - drift``
   is still positive, elapsed on the monotonic clock from before the first send.
4. Otherwise the attempt's keys are released on every node that may hold one
   (also those that timed out: a timed-out SET may have been applied), and the
   next attempt comes after a jittered, growing delay.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import sys
import time
from typing import TYPE_CHECKING, Any, final

from redis.asyncio import Redis

from . import _config
from ._config import Settings, Terms, show, ttl_ms
from ._errors import (
    ConfigurationError,
    ConfigurationTypeError,
    ExtendError,
    LockLost,
    LockNotAcquired,
    NodeError,
    RedlockClosed,
    RedlockError,
    ReleaseError,
)
from ._node import Node, RedisNode, describe_url, host_identity
from ._notify import Notifier, Wakeup
from ._quorum import Decision, NodeOutcome, Vote, quorum
from ._round import Ask, Fleet, Quarantined, Round, wait_decided, wait_tasks_shielded
from ._scripts import ACQUIRE, EXTEND, MARKER, RELEASE, RELEASE_QUIET, channel
from ._wire import (
    MuxNode,
    acquire_payload,
    extend_payload,
    release_payload,
    set_nx_payload,
)

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterable, Sequence
    from types import TracebackType

    from ._extender import Extender
    from ._hold import LockContext, LostCallback

logger = logging.getLogger("redlock_aio")

NodeSpec = str | Redis | Node

#: How many distinct TTLs get their terms remembered.
_TERMS_CACHED = 64

_REACHED = Decision.REACHED  # enum members are slow to look up on 3.11
_UNDECIDED = Decision.PENDING

#: Answers that mean the node holds our key now.
_SET = (Vote.YES, Vote.QUARANTINED)
#: Votes that are answers from the node (not errors, timeouts or pending).
_ANSWERS = (Vote.YES, Vote.NO, Vote.QUARANTINED)


@final
class Lock:
    """One acquisition of a resource: its token, and until when it is known held.

    A lock is not re-entrant and belongs to whoever holds this object, whatever
    task or thread: the token lives here, never in a thread-local or global.
    Validity is computed locally on the monotonic clock; there is deliberately no
    network "is it still locked?" check, which could wrongly say yes.

    :ivar resource: the resource as given to ``acquire``.
    :ivar key: the Redis key (prefix + resource).
    :ivar token: the random value only this holder knows.
    :ivar ttl: the TTL of the last successful acquire or extend, in seconds.
    :ivar valid_until: monotonic time (the AsyncRedlock's clock) until which the
        lock is known held.
    """

    __slots__ = (
        "__weakref__",
        "_lost_callbacks",
        "_lost_reason",
        "_outcomes",
        "_redlock",
        "_released",
        "_tails",
        "_terms",
        "key",
        "resource",
        "token",
        "ttl",
        "valid_until",
    )

    def __init__(
        self,
        redlock: AsyncRedlock,
        resource: str | bytes,
        key: bytes,
        token: bytes,
        terms: Terms,
        valid_until: float,
        tails: list[asyncio.Future[Any]],
    ) -> None:
        self._redlock = redlock
        self.resource = resource
        self.key = key
        self.token = token
        self.ttl = terms.ttl
        self._terms = terms
        self.valid_until = valid_until
        self._tails = tails
        self._released = False
        self._lost_reason: str | None = None
        self._lost_callbacks: list[Callable[[Lock], object]] = []
        self._outcomes: list[NodeOutcome] = []

    @property
    def outcomes(self) -> tuple[NodeOutcome, ...]:
        """What each node answered to the latest acquire, extend or release.
        A node slower than the quorum shows ``pending`` until it answers; its
        late answer is shown then, but it did not count."""
        return tuple(self._outcomes)

    def remaining(self) -> float:
        """Seconds of validity left (0.0 once expired, lost or released)."""
        if self._released or self._lost_reason is not None:
            return 0.0
        return max(0.0, self.valid_until - self._redlock.clock())

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
            and self.valid_until <= self._redlock.clock()
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
        return await self._redlock._extend(self, ttl)

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
        await self._redlock._release(self)

    def on_lost(self, callback: Callable[[Lock], object]) -> None:
        """Call ``callback(lock)`` once, when the lock becomes known lost."""
        if self._lost_reason is not None:
            callback(self)
        else:
            self._lost_callbacks.append(callback)

    def _mark_lost(self, reason: str, *, warn: bool = True) -> None:
        if self._lost_reason is not None or self._released:
            return
        self._lost_reason = reason
        if warn:
            logger.warning(
                "lock %s lost: %s [%s]",
                show(self.resource),
                reason,
                "; ".join(map(str, self._outcomes)),
            )
        callbacks, self._lost_callbacks = self._lost_callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                logger.exception("on_lost callback for %s failed", show(self.resource))

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
        return f"<Lock {show(self.resource)} {state}>"


@final
class AsyncRedlock:
    """Distributed mutual exclusion over N independent Redis (or Valkey) nodes.

    Guarantees, under Redlock's model (bounded clock drift, bounded process
    pauses, nodes that do not lose keys): a lock is returned only when a
    majority of nodes granted it and its validity is positive; while its
    validity lasts, no other client can obtain it. Not guaranteed: safety under
    unbounded process pauses or clock jumps on the servers; use fencing for
    that (see README).

    :param nodes: ``redis://``, ``rediss://`` or ``unix://`` URLs, redis-py
        asyncio clients, or :class:`Node` objects. A URL gets one lean
        multiplexed connection (:class:`MuxNode`), closed by :meth:`aclose`;
        redis-py clients passed in are used as they are and left open.
    :param ttl: default lock lifetime in seconds.
    :param node_timeout: seconds each node gets per request (default: 5% of the
        TTL, at most 1 s). A node that is down or slower counts as a failure.
    :param drift_factor: share of the TTL assumed lost to clock drift; the drift
        is ``ttl * drift_factor + 2 ms``.
    :param retry_count: retries after the first attempt of a blocking acquire
        (``None``: no limit, only ``timeout`` ends the wait).
    :param retry_delay: the first delay between attempts, doubled on each retry
        up to ``retry_delay_max``.
    :param retry_jitter: share of each delay taken off at random, so that
        contenders do not retry in lockstep.
    :param key_prefix: prepended to every resource to make its key.
    :param restart_quarantine: seconds a node must have been up before its yes
        votes count (a node that restarted without its keys could grant a lock
        that is still held). Default ``None``: the largest TTL this AsyncRedlock
        has used. ``0`` turns the quarantine off.
    :param clock: monotonic clock in seconds (default :func:`time.monotonic`);
        for tests.
    :raises ConfigurationError: an argument is invalid (no I/O has been done).
    """

    def __init__(
        self,
        nodes: Sequence[NodeSpec],
        *,
        ttl: float = _config.DEFAULT_TTL,
        node_timeout: float | None = None,
        drift_factor: float = _config.DEFAULT_DRIFT_FACTOR,
        retry_count: int | None = None,
        retry_delay: float = 0.05,
        retry_delay_max: float = 1.0,
        retry_jitter: float = 0.5,
        key_prefix: str | bytes = "",
        restart_quarantine: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.settings = Settings(
            ttl=ttl,
            node_timeout=node_timeout,
            drift_factor=drift_factor,
            retry_count=retry_count,
            retry_delay=retry_delay,
            retry_delay_max=retry_delay_max,
            retry_jitter=retry_jitter,
            key_prefix=_config.check_prefix(key_prefix),
            restart_quarantine=restart_quarantine,
        )
        self._max_ttl = self.settings.ttl
        self._default_terms = self.settings.terms(self.settings.ttl)
        self._terms_cache: dict[object, Terms] = {}
        _config.check_clock(clock)
        self.clock: Callable[[], float] = time.monotonic if clock is None else clock
        self._nodes: tuple[Node, ...] = _make_nodes(_config.check_node_list(nodes))
        self.quorum = quorum(len(self._nodes))
        self._notifiers = [n for n in self._nodes if isinstance(n, Notifier)]
        self._tasks: set[asyncio.Task[Any]] = set()
        self._fleet = Fleet(self._nodes, self._spawn)
        # The nodes' marker key, checked by every acquire, unless the restart
        # quarantine is off (then a plain SET NX).
        self._marker: bytes | None = (
            None if restart_quarantine == 0 else self.settings.key_prefix + MARKER
        )
        # The event loop this client is used from, once it has been.
        self._loop: asyncio.AbstractEventLoop | None = None
        # acquire() calls under way, and what aclose() waits on for them.
        self._acquiring = 0
        # Resolved when aclose() begins (wakes acquires between attempts), and
        # when the last acquire under way has ended after that.
        self._closing: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        # Locks not yet released, so that aclose() can release them even when
        # the caller dropped the handle. Expired ones are pruned as it grows.
        self._held: set[Lock] = set()
        self._prune_at = 1024
        self._closed = False
        self._nodes_closed = False
        self._extender: Extender | None = None  # created by the first lock() block
        n = len(self._nodes)
        if n < 3 or n % 2 == 0:
            logger.warning(
                "AsyncRedlock over %d node(s): %s; an odd number >= 3 of independent "
                "nodes (3 or 5) is what tolerates node failures",
                n,
                "a single node is a single point of failure"
                if n == 1
                else f"it tolerates only {n - self.quorum} failure(s), "
                f"like {n - 1} nodes would",
            )

    @property
    def nodes(self) -> tuple[Node, ...]:
        return self._nodes

    # -- acquire ----------------------------------------------------------------

    async def acquire(
        self,
        resource: str | bytes,
        *,
        ttl: float | None = None,
        blocking: bool = True,
        timeout: float | None = None,
    ) -> Lock:
        """Acquire ``resource`` on a quorum of nodes.

        :param ttl: lock lifetime in seconds (default: the AsyncRedlock's).
        :param blocking: retry until acquired (True) or make a single attempt.
        :param timeout: with ``blocking``, give up after about this many seconds
            (the attempt in flight then finishes, within the per-node timeout).
            ``None`` waits as long as ``retry_count`` allows (for ever by default).
            An outer ``asyncio.timeout`` / ``anyio.fail_after`` works as well.
        :return: the :class:`Lock`, with positive validity.
        :raises LockNotAcquired: no quorum within the retries or the timeout;
            carries each node's answer in the last attempt.
        :raises ConfigurationError: an argument is invalid.
        :raises RedlockClosed: after :meth:`aclose`.

        Cancelled at any point, it leaves no key of its own on any node: the
        cleanup is shielded and bounded by the per-node timeout.
        """
        key, terms = self._check(resource, ttl)
        _config.flag("blocking", blocking)
        limit = None if timeout is None else _config.check_timeout(timeout)
        s = self.settings
        deadline = None if limit is None else self.clock() + limit
        ttl_s, px, node_timeout, drift = terms
        spawned: list[asyncio.Future[Any]] = []
        attempt = 0
        rnd: Round | None = None
        wakeup: Wakeup | None = None
        self._acquiring += 1
        try:
            while True:
                attempt += 1
                token = secrets.token_bytes(20)
                start = self.clock()
                rnd = Round(
                    self._fleet,
                    self._ask_acquire(key, token, px),
                    timeout=node_timeout,
                    needed=self.quorum,
                )
                spawned += rnd.replies
                decision = await rnd.decided
                if self._closed:  # aclose() began meanwhile: take the keys back
                    raise RedlockClosed(
                        f"acquire of {show(resource)} ended by aclose(); its keys "
                        "were taken back"
                    )
                if decision is _REACHED:
                    valid_until = start + ttl_s - drift  # see validity_deadline
                    if self.clock() < valid_until:
                        lock = Lock(
                            self, resource, key, token, terms, valid_until, rnd.replies
                        )
                        lock._outcomes = rnd.outcomes
                        self._hold(lock)
                        return lock
                done, rnd = rnd, None
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug(
                        "acquire %s: attempt %d failed [%s]",
                        show(resource),
                        attempt,
                        "; ".join(map(str, done.outcomes)),
                    )
                await self._undo(done, key, token, node_timeout, spawned)
                spawned = [t for t in spawned if not t.done()]
                if not blocking or (
                    s.retry_count is not None and attempt > s.retry_count
                ):
                    raise self._not_acquired(resource, done.outcomes, attempt, decision)
                delay = self._retry_delay(attempt)
                if deadline is not None:
                    left = deadline - self.clock()
                    if left <= 0:
                        raise self._not_acquired(
                            resource, done.outcomes, attempt, decision, timeout=limit
                        )
                    delay = min(delay, left)
                closing = self._closing_future()
                if wakeup is not None:
                    await wakeup.wait(delay, closing)
                elif self._notifiers and any(o.vote is Vote.NO for o in done.outcomes):
                    # Held by someone else: be told when it is released, and
                    # try again at once, so a release that came before the
                    # subscription is not missed.
                    wakeup = Wakeup(self._notifiers, channel(key), self._spawn)
                    await wakeup.start(node_timeout)
                else:
                    await _sleep(delay, closing)
                if self._closed:
                    raise RedlockClosed(
                        f"acquire of {show(resource)} ended by aclose()"
                    )
        except BaseException:
            # Cancelled (or failed) mid-attempt: a SET in flight may still land.
            # Release wherever it may, and wait for that, shielded and bounded.
            if rnd is not None:
                self._undo_later(
                    rnd, key, token, node_timeout, spawned, include_yes=True
                )
            await wait_tasks_shielded(spawned)
            raise
        finally:
            if wakeup is not None:
                wakeup.close()
            self._acquiring -= 1
            drained = self._drained
            if drained is not None and not self._acquiring and not drained.done():
                drained.set_result(None)

    def _quarantine_ms(self) -> int:
        """The restart quarantine in ms: as set, or the largest TTL used."""
        quarantine = self.settings.restart_quarantine
        return ttl_ms(self._max_ttl if quarantine is None else quarantine)

    def _ask_acquire(self, key: bytes, token: bytes, px: int) -> Ask:
        marker = self._marker
        if marker is None:
            return _set_nx(key, token, px)
        wait = self._quarantine_ms()
        return Ask(
            lambda node: node.acquire(key, token, px, marker, wait),
            acquire_payload(key, token, px, marker, wait),
            None,
            ACQUIRE,
            _grant,
        )

    async def init_nodes(self) -> tuple[NodeOutcome, ...]:
        """Mark every node as holding all the lock data of this key prefix, so
        that the restart quarantine does not apply to it until it loses its
        data again (the acquire script then finds its marker key missing).

        For a new deployment, or when no lock of this key prefix is held
        anywhere: a node that lost its data while a lock was held must wait
        its quarantine out, and this would cut it short. Also the
        ``redlock-aio init`` command.

        :return: each node's outcome (``yes`` once marked).
        :raises RedlockError: a node could not be marked (its outcome says
            why); the others are marked.
        """
        self._check_open()
        marker = self._marker
        if marker is None:
            raise ConfigurationError(
                "init_nodes() marks the nodes for the restart quarantine, which "
                "this AsyncRedlock has off (restart_quarantine=0)"
            )
        timeout = self._default_terms.node_timeout
        results = await asyncio.gather(
            *(asyncio.wait_for(n.init_marker(marker), timeout) for n in self._nodes),
            return_exceptions=True,
        )
        outcomes = tuple(
            NodeOutcome(n.name, Vote.YES)
            if not isinstance(r, BaseException)
            else NodeOutcome(n.name, Vote.ERROR, _node_error(n.name, r))
            for n, r in zip(self._nodes, results, strict=True)
        )
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise RedlockError(
                f"could not mark {len(failed)} of {len(outcomes)} nodes: "
                + "; ".join(map(str, failed))
            )
        return outcomes

    def _hold(self, lock: Lock) -> None:
        held = self._held
        held.add(lock)
        if len(held) >= self._prune_at:
            now = self.clock()
            held.difference_update([k for k in held if k.valid_until <= now])
            self._prune_at = max(1024, 2 * len(held))

    async def _undo(
        self,
        rnd: Round,
        key: bytes,
        token: bytes,
        node_timeout: float,
        spawned: list[asyncio.Future[Any]],
    ) -> None:
        """Release a failed attempt's keys. Nodes that said yes are released now
        (they answer); nodes that timed out, errored or have not answered yet
        are released in the background once their SET is over. Nodes that said
        no hold nothing of ours. Every request made is added to ``spawned``."""
        self._undo_later(rnd, key, token, node_timeout, spawned, include_yes=False)
        yes = [i for i, o in enumerate(rnd.outcomes) if o.vote in _SET]
        if yes:
            now = self._release_round(
                yes, key, token, node_timeout, [rnd.replies[i] for i in yes]
            )
            spawned += now.replies
            await wait_decided(now)

    def _undo_later(
        self,
        rnd: Round,
        key: bytes,
        token: bytes,
        node_timeout: float,
        spawned: list[asyncio.Future[Any]],
        *,
        include_yes: bool,
    ) -> None:
        """Start releasing on every node whose answer leaves a key of ours
        possible, each after its SET; don't wait."""
        idx = [
            i
            for i, o in enumerate(rnd.outcomes)
            if o.vote is not Vote.NO and (include_yes or o.vote not in _SET)
        ]
        if idx:
            spawned += self._release_round(
                idx, key, token, node_timeout, [rnd.replies[i] for i in idx]
            ).replies

    def _release_round(
        self,
        only: Sequence[int] | None,
        key: bytes,
        token: bytes,
        node_timeout: float,
        after: Sequence[asyncio.Future[Any] | None],
        *,
        notify: bool = False,
        needed: int | None = None,
        before: Sequence[NodeOutcome] | None = None,
    ) -> Round:
        ask = Ask(
            lambda node: node.release(key, token, notify=notify),
            release_payload(key, token, notify),
            1,
            RELEASE if notify else RELEASE_QUIET,
        )
        return Round(
            self._fleet,
            ask,
            timeout=node_timeout,
            needed=(len(self._nodes) if only is None else len(only))
            if needed is None
            else needed,
            only=only,
            wait_all=True,
            after=after,
            before=before,
        )

    def _retry_delay(self, attempt: int) -> float:
        s = self.settings
        base = min(s.retry_delay_max, s.retry_delay * 2.0 ** min(attempt - 1, 30))
        return base * (1.0 - s.retry_jitter * random.random())

    def _not_acquired(
        self,
        resource: str | bytes,
        outcomes: Sequence[NodeOutcome],
        attempts: int,
        decision: Decision,
        timeout: float | None = None,
    ) -> LockNotAcquired:
        yes = sum(o.ok for o in outcomes)
        why = (
            "validity ran out before the quorum answered"
            if decision is Decision.REACHED
            else f"{yes} of {len(outcomes)} nodes granted it, {self.quorum} needed"
        )
        when = f" within {timeout} s" if timeout is not None else ""
        return LockNotAcquired(
            f"could not acquire {show(resource)}{when} after {attempts} attempt(s): {why}",
            outcomes,
            attempts,
        )

    # -- extend and release -------------------------------------------------------

    async def _extend(self, lock: Lock, ttl: float | None) -> float:
        self._check_open()
        if lock._released:
            raise LockLost(f"cannot extend {show(lock.resource)}: it was released")
        terms = lock._terms if ttl is None else self._terms(ttl)
        ttl_s, px, node_timeout, drift = terms
        start = self.clock()
        old_deadline = lock.valid_until
        if lock.lost or start >= old_deadline:
            raise LockLost(
                f"cannot extend {show(lock.resource)}: {lock._lost_reason}; "
                "a lost lock is never revived"
            )
        # No answer after the current deadline can count: by then another client
        # may legitimately hold the lock.
        timeout = min(node_timeout, old_deadline - start)
        key, token = lock.key, lock.token
        ask = Ask(
            lambda node: node.extend(key, token, px),
            extend_payload(key, token, px),
            1,
            EXTEND,
        )
        rnd = Round(
            self._fleet,
            ask,
            timeout=timeout,
            needed=self.quorum,
            after=lock._tails,
        )
        lock._tails = rnd.replies
        lock._outcomes = rnd.outcomes
        decision = await rnd.decided
        now = self.clock()
        if decision is _REACHED and now < old_deadline:
            new_deadline = start + ttl_s - drift  # see validity_deadline
            if now < new_deadline:
                lock.valid_until = new_deadline
                lock.ttl = ttl_s
                lock._terms = terms
                return lock.valid_until - now
        gone = sum(o.vote is Vote.NO for o in rnd.outcomes)
        if now >= old_deadline or gone >= self.quorum:
            why = (
                "its validity ran out before a quorum confirmed the extension"
                if now >= old_deadline
                else f"the key is gone or taken on {gone} of {len(self._nodes)} nodes"
            )
            lock._mark_lost(why)
            raise LockLost(f"lock {show(lock.resource)} lost: {why}", rnd.outcomes)
        raise ExtendError(
            f"could not extend {show(lock.resource)}: "
            f"{sum(o.ok for o in rnd.outcomes)} of {len(self._nodes)} nodes extended it, "
            f"{self.quorum} needed; it stays valid for {lock.remaining():.3f} s",
            rnd.outcomes,
        )

    async def _release(self, lock: Lock) -> None:
        if lock._released:
            return
        if self._nodes_closed:
            raise RedlockClosed(
                f"cannot release {show(lock.resource)}: the AsyncRedlock was closed "
                "(its connections too); the keys expire by their TTL"
            )
        self._check_loop()
        rnd = self._release_round(
            None,
            lock.key,
            lock.token,
            lock._terms.node_timeout,
            lock._tails,
            notify=True,
            # Wait for the nodes that answered this lock's last request (by the
            # time the others are done); the release to one that was slow or
            # failing goes on in the background (after that request, bounded
            # by the per-node timeout).
            needed=self.quorum,
            before=lock._outcomes or None,
        )
        lock._tails = rnd.replies
        try:
            await wait_decided(rnd)
        finally:
            lock._outcomes = rnd.outcomes
            confirmed = rnd.answered  # yes or no: a release vets nothing
            if rnd.decision is not _UNDECIDED and confirmed >= self.quorum:
                lock._released = True
                self._held.discard(lock)
        if not lock._released:
            raise ReleaseError(
                f"release of {show(lock.resource)} confirmed by {confirmed} of "
                f"{len(self._nodes)} nodes, {self.quorum} needed; the keys expire "
                "by their TTL, and release() may be called again",
                rnd.outcomes,
            )

    # -- auto-extending blocks ------------------------------------------------------

    def lock(
        self,
        resource: str | bytes,
        *,
        ttl: float | None = None,
        blocking: bool = True,
        timeout: float | None = None,
        auto_extend: bool = True,
        cancel_on_lost: bool = True,
        on_lost: LostCallback | None = None,
    ) -> LockContext:
        """``async with redlock.lock("orders:42"):`` holds the resource for the
        block, re-extending it in the background until the block exits.

        If the lock cannot be kept, the body is cancelled and the block raises
        :class:`LockLost` (``cancel_on_lost=False`` lets the body run on: it is
        told through ``on_lost`` / ``lock.lost`` and the block still raises
        :class:`LockLost` at its end). See :class:`LockContext`.
        """
        from ._hold import LockContext

        self._check(resource, ttl)
        _config.check_timeout(timeout)
        _config.flag("blocking", blocking)
        _config.flag("auto_extend", auto_extend)
        _config.flag("cancel_on_lost", cancel_on_lost)
        _config.optional_callable("on_lost", on_lost)
        return LockContext(
            self,
            resource,
            ttl=ttl,
            blocking=blocking,
            timeout=timeout,
            auto_extend=auto_extend,
            cancel_on_lost=cancel_on_lost,
            on_lost=on_lost,
        )

    # -- lifecycle --------------------------------------------------------------------

    def _check(self, resource: str | bytes, ttl: float | None) -> tuple[bytes, Terms]:
        self._check_open()
        key = _config.key_for(self.settings.key_prefix, resource)
        if key == self._marker:
            raise ConfigurationError(
                f"resource {show(resource)} names the nodes' marker key, which the "
                "restart quarantine uses; pick another name"
            )
        return key, self._default_terms if ttl is None else self._terms(ttl)

    def _check_open(self) -> None:
        if self._closed:
            raise RedlockClosed("this AsyncRedlock was closed")
        self._check_loop()

    def _check_loop(self) -> None:
        """An AsyncRedlock lives in one event loop: its connections, timers
        and tasks belong to the loop it was first used in."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # No running loop: lock() called outside one (checked when entered),
            # or a coroutine of another async library. Trio (which anyio's trio
            # backend runs) imports sniffio, which names it.
            sniffio = sys.modules.get("sniffio")
            if sniffio is None:
                return
            try:
                library = sniffio.current_async_library()
            except sniffio.AsyncLibraryNotFoundError:
                return
            raise RedlockError(
                f"redlock_aio runs on asyncio (or uvloop) only: this runs on "
                f"{library}, with no asyncio event loop running"
            ) from None
        if loop is not self._loop:
            if self._loop is not None:
                raise RedlockError(
                    "this AsyncRedlock was first used in another event loop, and "
                    "its connections, timers and tasks belong to that loop: "
                    "create one AsyncRedlock per event loop (in the app's start-up, "
                    "or in a fixture of the same loop scope as its tests)"
                )
            self._loop = loop

    def _closing_future(self) -> asyncio.Future[None]:
        """Resolves when aclose() begins."""
        closing = self._closing
        if closing is None:
            closing = self._closing = asyncio.get_running_loop().create_future()
            if self._closed:
                closing.set_result(None)
        return closing

    def _terms(self, ttl: object) -> Terms:
        """The terms of a lock of ``ttl`` seconds (checked, then remembered)."""
        cache = self._terms_cache
        # bool is an int: its type keeps True from passing as a cached 1.
        terms = cache.get(ttl) if type(ttl) in (float, int) else None
        if terms is None:
            ttl_s = _config.check_ttl(ttl, self.settings.drift_factor)
            self._max_ttl = max(self._max_ttl, ttl_s)
            terms = self.settings.terms(ttl_s)
            if len(cache) < _TERMS_CACHED:
                cache[ttl] = terms
        return terms

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def aclose(self) -> None:
        """Release the locks still held, end every background task, and close the
        clients this AsyncRedlock created. Idempotent."""
        if self._closed:
            return
        if self._loop is not None:
            # From another loop (or from trio) this raises: the connections,
            # timers and tasks belong to the loop this client was used in.
            self._check_loop()
        self._closed = True
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)
        if self._acquiring:
            # Acquires under way end at their next step (within a per-node
            # timeout), taking back the keys they may have set.
            self._drained = asyncio.get_running_loop().create_future()
            await wait_tasks_shielded([self._drained])
        if self._extender is not None:
            await self._extender.aclose()
        held = [lock for lock in self._held if not lock._released]
        if held:
            logger.info("aclose: releasing %d lock(s) still held", len(held))
        for lock in held:
            lock._mark_lost("the AsyncRedlock was closed", warn=False)
        for lock in held:
            try:
                await lock.release()
            except ReleaseError as exc:
                logger.warning("aclose: %s", exc)
        # Requests still in flight end by their own per-node deadline.
        await wait_tasks_shielded([*self._tasks, *self._fleet.in_flight()])
        self._fleet.close()
        self._nodes_closed = True
        for node in self._nodes:
            await node.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        names = ", ".join(node.name for node in self._nodes)
        return f"<AsyncRedlock [{names}] quorum={self.quorum}>"


async def _sleep(delay: float, closing: asyncio.Future[None]) -> None:
    """Sleep ``delay`` seconds, or until ``closing`` resolves."""
    if closing.done():
        return
    await asyncio.wait((closing,), timeout=delay)


def _grant(reply: object) -> bool | Quarantined:
    """The vote in a reply of the acquire script (see ``_scripts.ACQUIRE``)."""
    if reply == 1:
        return True
    if isinstance(reply, list) and len(reply) == 2:
        wait, fresh = reply
        if isinstance(wait, int) and wait > 0:
            return Quarantined(wait / 1000, fresh == 1)
    return False


def _node_error(name: str, exc: BaseException) -> NodeError:
    what = "no reply in time" if isinstance(exc, TimeoutError) else str(exc)
    err = NodeError(name, f"{type(exc).__name__}: {what}")
    err.__cause__ = exc
    return err


def _set_nx(key: bytes, token: bytes, px: int) -> Ask:
    return Ask(
        lambda node: node.set_nx(key, token, px), set_nx_payload(key, token, px), b"OK"
    )


def _make_nodes(specs: Iterable[object]) -> tuple[Node, ...]:
    specs = list(specs)
    # Check every spec before creating any client.
    seen: dict[object, str] = {}
    for spec in specs:
        if isinstance(spec, str):
            name, identity = describe_url(spec)
        elif isinstance(spec, Redis):
            from ._node import describe_client

            name, identity = describe_client(spec)
        elif isinstance(spec, Node):
            name, identity = spec.name, spec.identity
        else:
            raise ConfigurationTypeError(
                f"a node must be a redis:// URL, a redis.asyncio.Redis client or a "
                f"Node, got {type(spec).__name__}"
            )
        if isinstance(identity, tuple) and len(identity) > 1 and identity[0] == "tcp":
            # localhost, 127.0.0.1 and ::1 are one server, however it was given.
            identity = ("tcp", host_identity(str(identity[1])), *identity[2:])
        if identity in seen:
            raise ConfigurationError(
                f"node {name} is given twice: each node must be a distinct server, "
                "or the quorum counts one server's vote twice"
            )
        seen[identity] = name
    nodes: list[Node] = []
    for spec in specs:
        if isinstance(spec, str):
            nodes.append(MuxNode.from_url(spec))
        elif isinstance(spec, Redis):
            nodes.append(RedisNode(spec))
        else:
            assert isinstance(spec, Node)
            nodes.append(spec)
    return tuple(nodes)
