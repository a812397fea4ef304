"""The Redlock algorithm, top to bottom: :class:`AsyncRedlock`.

Acquire:

1. A fresh 20-byte token from the OS's CSPRNG (:func:`os.urandom`, as
   :mod:`secrets` uses, read in bulk: :mod:`._tokens`) for each attempt.
2. ``SET key token NX PX ttl`` (with the restart quarantine's marker check) to
   every node at once, each under the per-node timeout; the attempt is decided
   as soon as a quorum said yes or cannot.
3. The lock holds if a quorum said yes and ``validity = ttl - elapsed - drift``
   is still positive, elapsed on the monotonic clock from before the first send.
4. Otherwise the attempt's keys are taken back, in the background, on every
   node that may hold one (also those that timed out: a timed-out SET may have
   been applied), and the next attempt comes after a jittered, growing delay,
   or at once when a release is announced.

Extend (by hand or in the background, one rule: :func:`~._quorum.renewal`):
every node at once, the validity counted from before the first send; renewed
with a quorum of yes before the current deadline, lost once that deadline
passed or a quorum no longer holds the key, else missed.

Release: every node at once; done once every node that answered the lock's
latest request has confirmed (a quorum at least); the others get theirs in the
background, after that request.

Every request goes through :meth:`~._node.Node.submit` (one
:class:`~._commands.Command`, one :class:`~._fanout.Round`); the pure rules are
in :mod:`._quorum`, the lock's state in :mod:`._lock`, the scheduling of
auto-extension in :mod:`._keeper`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from functools import partial
from threading import get_ident
from typing import TYPE_CHECKING, Any, final

from . import _commands, _config, _forks
from ._config import Settings, TermsCache, short_repr, ttl_ms
from ._context import LockContext
from ._errors import (
    ConfigurationError,
    ExtendError,
    LockLost,
    LockNotAcquired,
    RedlockClosed,
    RedlockError,
    ReleaseError,
)
from ._fanout import (
    BatchRound,
    Nodes,
    Round,
    all_done,
    finish_then_reraise,
    wait_decided,
    wait_tasks_shielded,
)
from ._keeper import Keeper
from ._lock import Lock
from ._node import Node, Notifier
from ._nodes import NodeSpec, make_nodes, warn_if_weak
from ._notify import Closing, Wakeup
from ._quorum import Decision, NodeOutcome, Renewal, Vote, backoff, renewal
from ._scripts import MARKER, channel
from ._tokens import TokenSource

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Sequence
    from types import TracebackType

    from ._commands import Command
    from ._config import LeaseTerms
    from ._context import LostCallback
    from ._keeper import OnResult

logger = logging.getLogger("redlock_aio")

_REACHED = Decision.REACHED  # enum members are slow to look up on 3.11
_UNDECIDED = Decision.PENDING
_RENEWED = Renewal.RENEWED
_LOST = Renewal.LOST

#: Answers that mean the node holds our key now.
_SET = (Vote.YES, Vote.QUARANTINED)


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
        self._terms = TermsCache(self.settings)
        self._default_terms = self._terms.default
        self._prefix = self.settings.key_prefix
        _config.check_clock(clock)
        self.clock: Callable[[], float] = time.monotonic if clock is None else clock
        self._nodes = Nodes(make_nodes(_config.check_node_list(nodes)))
        self._no_requests: tuple[None, ...] = (None,) * len(self._nodes)
        self.quorum = self._nodes.needed
        self._notifiers = [n for n in self._nodes.nodes if isinstance(n, Notifier)]
        self._tasks: set[asyncio.Task[Any]] = set()
        # The nodes' marker key, checked by every acquire, unless the restart
        # quarantine is off (then a plain SET NX).
        self._marker: bytes | None = (
            None if restart_quarantine == 0 else self.settings.key_prefix + MARKER
        )
        # The event loop this client is used from, once it has been, and the
        # thread and fork generation it runs in (see _check_loop).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._loop_forks = -1
        self._tokens = TokenSource()
        # acquire() calls under way, and what aclose() waits on for them.
        self._acquiring = 0
        # Set when aclose() begins (wakes acquires between attempts); resolved
        # when the last acquire under way has ended after that.
        self._closing = Closing()
        self._drained: asyncio.Future[None] | None = None
        # Locks not yet released, so that aclose() can release them even when
        # the caller dropped the handle. Expired ones are pruned as it grows.
        self._held: set[Lock] = set()
        self._prune_at = 1024
        self._closed = False
        self._nodes_closed = False
        self._keeper: Keeper | None = None  # created by the first lock() block
        warn_if_weak(len(self._nodes), self.quorum)

    @property
    def nodes(self) -> tuple[Node, ...]:
        return self._nodes.nodes

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
        key, terms, loop = self._check(resource, ttl)
        if blocking is not True and blocking is not False:
            _config.flag("blocking", blocking)
        limit = None if timeout is None else _config.check_timeout(timeout)
        s = self.settings
        deadline = None if limit is None else self.clock() + limit
        node_timeout = terms.node_timeout
        # Every request of this call's earlier attempts still in flight (their
        # take-backs included): waited for, shielded, if the call is cancelled.
        in_flight: list[asyncio.Future[Any]] = []
        attempt = 0
        rnd: Round | None = None
        wakeup: Wakeup | None = None
        self._acquiring += 1
        try:
            while True:
                attempt += 1
                token = self._tokens.take()
                start = self.clock()
                rnd = Round(
                    self._nodes,
                    self._acquire_command(key, token, terms.px),
                    timeout=node_timeout,
                    needed=self.quorum,
                    loop=loop,
                )
                decision = await rnd.decided
                if self._closed:  # aclose() began meanwhile: take the keys back
                    raise RedlockClosed(
                        f"acquire of {short_repr(resource)} ended by aclose(); its "
                        "keys were taken back"
                    )
                if decision is _REACHED:
                    # From the earliest write of a yes request, not from the
                    # round's start: a request that waited in the client (a
                    # connection opening, a full window) had not reached its
                    # node, so that wait costs the lock no validity.
                    valid_until = terms.valid_until(start + rnd.write_delay())
                    if self.clock() < valid_until:
                        lock = Lock(
                            self,
                            resource,
                            (key,),
                            token,
                            terms,
                            valid_until,
                            _in_flight_only(rnd, self._no_requests),
                            rnd.outcomes,
                        )
                        held = self._held
                        held.add(lock)  # for aclose()
                        if len(held) >= self._prune_at:
                            self._prune()
                        return lock
                failed, rnd = rnd, None
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug(
                        "acquire %s: attempt %d failed [%s]",
                        short_repr(resource),
                        attempt,
                        "; ".join(map(str, failed.outcomes)),
                    )
                # Take the keys back in the background: the outcome is known,
                # and a node that is slow to confirm must not delay it.
                in_flight += failed.replies
                in_flight += self._take_back(failed, key, token, node_timeout)
                in_flight = [f for f in in_flight if not f.done()]
                if not blocking or (
                    s.retry_count is not None and attempt > s.retry_count
                ):
                    raise self._not_acquired(
                        resource, failed.outcomes, attempt, decision
                    )
                delay = backoff(
                    attempt,
                    s.retry_delay,
                    s.retry_delay_max,
                    s.retry_jitter,
                    random.random(),
                )
                if deadline is not None:
                    left = deadline - self.clock()
                    if left <= 0:
                        raise self._not_acquired(
                            resource, failed.outcomes, attempt, decision, timeout=limit
                        )
                    delay = min(delay, left)
                if wakeup is not None:
                    await wakeup.wait(delay, self._closing)
                elif self._notifiers and any(
                    o.vote is Vote.NO for o in failed.outcomes
                ):
                    # Held by someone else: be told when it is released, and
                    # try again at once, so a release that came before the
                    # subscription is not missed.
                    wakeup = Wakeup(self._notifiers, channel(key), self._spawn)
                    await wakeup.start(node_timeout)
                else:
                    await self._closing.sleep(delay)
                if self._closed:
                    raise RedlockClosed(
                        f"acquire of {short_repr(resource)} ended by aclose()"
                    )
        except LockNotAcquired:
            # The outcome is known: the take-backs go on in the background
            # (bounded by the per-node timeout; aclose() waits for them).
            raise
        except BaseException:
            # Cancelled (or failed) mid-attempt: a SET in flight may still land.
            # Release wherever it may, and wait for that, shielded and bounded.
            if rnd is not None:
                in_flight += rnd.replies
                in_flight += self._take_back(
                    rnd, key, token, node_timeout, include_yes=True
                )
            await wait_tasks_shielded(in_flight)
            raise
        finally:
            if wakeup is not None:
                wakeup.close()
            self._acquiring -= 1
            drained = self._drained
            if drained is not None and not self._acquiring and not drained.done():
                drained.set_result(None)

    def _acquire_command(self, key: bytes, token: bytes, px: int) -> Command:
        marker = self._marker
        if marker is None:
            return _commands.set_nx(key, token, px)
        quarantine = self.settings.restart_quarantine
        wait = ttl_ms(self._terms.max_ttl if quarantine is None else quarantine)
        return _commands.acquire(key, token, px, marker, wait)

    def _take_back(
        self,
        rnd: Round,
        key: bytes,
        token: bytes,
        node_timeout: float,
        *,
        include_yes: bool = True,
    ) -> list[asyncio.Future[Any]]:
        """Release a failed attempt's keys on every node whose answer leaves a
        key of ours possible (not those that said no), each after its SET,
        without waiting; the requests made. ``include_yes=False`` leaves out
        the nodes that said yes."""
        idx = [
            i
            for i, o in enumerate(rnd.outcomes)
            if o.vote is not Vote.NO and (include_yes or o.vote not in _SET)
        ]
        if not idx:
            return []
        return Round(
            self._nodes,
            _commands.release(key, token, notify=False),
            timeout=node_timeout,
            needed=len(idx),
            only=idx,
            wait_all=True,
            after=[rnd.replies[i] for i in idx],
        ).replies

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
        rnd = Round(
            self._nodes,
            _commands.init_marker(marker),
            timeout=self._terms.default.node_timeout,
            needed=len(self._nodes),
            wait_all=True,
        )
        await wait_decided(rnd)
        outcomes = tuple(rnd.outcomes)
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise RedlockError(
                f"could not mark {len(failed)} of {len(outcomes)} nodes: "
                + "; ".join(map(str, failed))
            )
        return outcomes

    def _prune(self) -> None:
        """Forget the held locks that have expired (their keys are gone), so
        that the registry for aclose() does not grow without bound."""
        held = self._held
        now = self.clock()
        held.difference_update([k for k in held if k.valid_until <= now])
        self._prune_at = max(1024, 2 * len(held))

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
            f"could not acquire {short_repr(resource)}{when} after {attempts} attempt(s): {why}",
            outcomes,
            attempts,
        )

    # -- extend and release -------------------------------------------------------

    async def _extend(self, lock: Lock, ttl: float | None) -> float:
        self._check_open()
        if lock._released:
            raise LockLost(
                f"cannot extend {short_repr(lock.resource)}: it was released"
            )
        terms = lock._terms if ttl is None else self._terms.get(ttl)
        start = self.clock()
        old_deadline = lock.valid_until
        if lock.lost or start >= old_deadline:
            raise LockLost(
                f"cannot extend {short_repr(lock.resource)}: {lock._lost_reason}; "
                "a lost lock is never revived"
            )
        # No answer after the current deadline can count: by then another client
        # may legitimately hold the lock.
        left = old_deadline - start
        rnd = Round(
            self._nodes,
            _commands.extend(lock.key, lock.token, terms.px),
            timeout=min(terms.node_timeout, left),
            needed=self.quorum,
            after=lock._last_requests,
            not_after=asyncio.get_running_loop().time() + left,
        )
        lock._last_requests = rnd.replies
        lock._outcomes = rnd.outcomes
        lock._row = -1
        decision = await rnd.decided
        now = self.clock()
        new_deadline = terms.valid_until(start)
        verdict, why = renewal(
            n=len(self._nodes),
            needed=self.quorum,
            yes=rnd.yes if decision is _REACHED else 0,
            no=sum(o.vote is Vote.NO for o in rnd.outcomes),
            now=now,
            old_deadline=old_deadline,
            new_deadline=new_deadline,
        )
        if verdict is _RENEWED:
            lock.valid_until = new_deadline
            lock.ttl = terms.ttl
            lock._terms = terms
            return new_deadline - now
        if verdict is _LOST:
            lock._mark_lost(why)
            raise LockLost(
                f"lock {short_repr(lock.resource)} lost: {why}", rnd.outcomes
            )
        raise ExtendError(
            f"could not extend {short_repr(lock.resource)}: {why}; it stays valid "
            f"for {lock.remaining():.3f} s",
            rnd.outcomes,
        )

    def _extend_batch(self, locks: Sequence[Lock], on_result: OnResult) -> None:
        """Extend ``locks`` (of one per-node timeout) in one request per node,
        each decided on its own by :func:`~._quorum.renewal`, as
        :meth:`_extend`; ``on_result`` hears each verdict. Auto-extension's."""
        start = self.clock()  # before sending: the validity counts from here
        deadlines = [lock.valid_until for lock in locks]
        left = max(0.0, min(deadlines) - start)
        n = len(self._nodes)
        after = [
            _after_all([lock._last_requests[i] for lock in locks]) for i in range(n)
        ]
        items = [(lock.key, lock.token, lock._terms.px) for lock in locks]
        clock = self.clock
        needed = self.quorum

        def decided(k: int, decision: Decision, yes: int, no: int) -> None:
            lock = locks[k]
            if lock._released or lock._lost_reason is not None:
                on_result(k, _LOST, "", start)
                return
            new_deadline = lock._terms.valid_until(start)
            verdict, why = renewal(
                n=n,
                needed=needed,
                yes=yes,
                no=no,
                now=clock(),
                old_deadline=deadlines[k],
                new_deadline=new_deadline,
            )
            if verdict is _RENEWED:
                lock.valid_until = new_deadline
            # Lost: the keeper marks it lost if it still keeps it (a lock whose
            # block has ended, its release under way, lapsing meanwhile is
            # no news).
            on_result(k, verdict, why, start)

        rnd = BatchRound(
            self._nodes,
            _commands.extend_many(items),
            locks=len(locks),
            timeout=min(locks[0]._terms.node_timeout, left),
            needed=needed,
            on_decided=decided,
            after=after,
            not_after=asyncio.get_running_loop().time() + left,
        )
        replies = rnd.replies
        for k, lock in enumerate(locks):
            lock._last_requests = replies
            lock._outcomes = rnd
            lock._row = k

    async def _release(self, lock: Lock) -> None:
        if lock._released:
            return
        if self._nodes_closed:
            raise RedlockClosed(
                f"cannot release {short_repr(lock.resource)}: the AsyncRedlock was "
                "closed (its connections too); the keys expire by their TTL"
            )
        loop = self._check_loop()
        last = lock._last_requests
        rnd = Round(
            self._nodes,
            _commands.release(lock.keys[0], lock.token, notify=True),
            timeout=lock._terms.node_timeout,
            needed=self.quorum,
            wait_all=True,
            # None for the shared tuple of Nones (nothing in flight): a lookup
            # per request fewer.
            after=None if last is self._no_requests else last,
            # Wait for the nodes that answered this lock's last request (by the
            # time the others are done); the release to one that was slow or
            # failing goes on in the background (after that request, bounded
            # by the per-node timeout).
            answered_before=lock._latest_outcomes() or None,
            loop=loop,
        )
        lock._last_requests = rnd.replies
        try:
            try:  # wait_decided(rnd), a coroutine fewer per release
                await rnd.decided
            except asyncio.CancelledError as first:
                await finish_then_reraise(rnd, first)
        finally:
            lock._outcomes = rnd.outcomes
            lock._row = -1
            confirmed = rnd.answered  # yes or no: a release vets nothing
            if rnd.decision is not _UNDECIDED and confirmed >= self.quorum:
                lock._released = True
                self._held.discard(lock)
        if not lock._released:
            raise ReleaseError(
                f"release of {short_repr(lock.resource)} confirmed by {confirmed} of "
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
        self._check(resource, ttl)
        _config.check_timeout(timeout)
        _config.flag("blocking", blocking)
        _config.flag("auto_extend", auto_extend)
        _config.flag("cancel_on_lost", cancel_on_lost)
        _config.optional_callable("on_lost", on_lost)
        return LockContext(
            partial(
                self.acquire, resource, ttl=ttl, blocking=blocking, timeout=timeout
            ),
            self._keeper_of,
            self.clock,
            auto_extend=auto_extend,
            cancel_on_lost=cancel_on_lost,
            on_lost=on_lost,
        )

    def _keeper_of(self) -> Keeper:
        """The keeper of this client's auto-extended locks, made on first use."""
        keeper = self._keeper
        if keeper is None:
            keeper = self._keeper = Keeper(
                extend_batch=self._extend_batch, clock=self.clock, spawn=self._spawn
            )
            if self._closed:
                keeper._closed = True
        return keeper

    # -- lifecycle --------------------------------------------------------------------

    def _check(
        self, resource: str | bytes, ttl: float | None
    ) -> tuple[bytes, LeaseTerms, asyncio.AbstractEventLoop | None]:
        """The key and lease terms of a call on ``resource``, checked, and the
        running loop (see :meth:`_check_loop`)."""
        loop = self._check_open()
        key = _config.key_for(self._prefix, resource)
        if key == self._marker:
            raise ConfigurationError(
                f"resource {short_repr(resource)} names the nodes' marker key, which "
                "the restart quarantine uses; pick another name"
            )
        terms = self._default_terms if ttl is None else self._terms.get(ttl)
        return key, terms, loop

    def _check_open(self) -> asyncio.AbstractEventLoop | None:
        if self._closed:
            raise RedlockClosed("this AsyncRedlock was closed")
        return self._check_loop()

    def _check_loop(self) -> asyncio.AbstractEventLoop | None:
        """An AsyncRedlock lives in one event loop: its connections, timers
        and tasks belong to the loop it was first used in. The running loop
        (None outside one), for the rounds of the call.

        On Python 3.11 ``get_running_loop()`` is a system call (``getpid``),
        asked once here, not per request; and not at all when the client's
        loop is running in this thread (this process, not a fork of it): one
        thread runs one loop at a time, and while it runs, every line of
        Python in that thread runs inside it."""
        loop = self._loop
        if (
            loop is not None
            and self._loop_thread == get_ident()
            and self._loop_forks == _forks.generation
            and loop.is_running()
        ):
            return loop
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # No running loop: lock() called outside one (checked when entered),
            # or a coroutine of another async library. Trio (which anyio's trio
            # backend runs) imports sniffio, which names it.
            sniffio = sys.modules.get("sniffio")
            if sniffio is None:
                return None
            try:
                library = sniffio.current_async_library()
            except sniffio.AsyncLibraryNotFoundError:
                return None
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
            self._loop_thread = get_ident()
            self._loop_forks = _forks.generation
        return loop

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
        self._closing.set()
        if self._acquiring:
            # Acquires under way end at their next step (within a per-node
            # timeout), taking back the keys they may have set.
            self._drained = asyncio.get_running_loop().create_future()
            await wait_tasks_shielded([self._drained])
        if self._keeper is not None:
            await self._keeper.aclose()
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
        await wait_tasks_shielded([*self._tasks, *self._nodes.in_flight()])
        self._nodes_closed = True
        for node in self._nodes.nodes:
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
        names = ", ".join(node.name for node in self._nodes.nodes)
        return f"<AsyncRedlock [{names}] quorum={self.quorum}>"


def _in_flight_only(
    rnd: Round, none: tuple[None, ...]
) -> Sequence[asyncio.Future[Any] | None]:
    """A new lock's latest requests, to order its next ones after: those that
    may still run on their node, None for the others (``none``, shared, once
    all are answered), so that a held lock keeps no finished futures for the
    garbage collector to scan (a quorum decides before the slowest node
    answers).

    A request may still run if it is in flight, or if it failed (timed out,
    or failed with a connection retired while its node stalled: written, it
    may run when the node wakes, and the release must then go behind it, see
    ``MuxNode``'s ``_echo_behind``). Only an answer (or a cancellation of
    ours, which is not sent) says it will not."""
    if not rnd.unsettled and not rnd.failures:
        return none  # every request answered
    replies = rnd.replies
    for fut in replies:
        if not _answered(fut):
            return tuple(None if _answered(f) else f for f in replies)
    return none


def _answered(fut: asyncio.Future[Any]) -> bool:
    """Whether ``fut``'s request is done with for good (see _in_flight_only)."""
    return fut.done() and (fut.cancelled() or fut.exception() is None)


def _after_all(
    futures: Sequence[asyncio.Future[Any] | None],
) -> asyncio.Future[Any] | None:
    """One future to order a request after every one of ``futures`` still in
    flight (None if none is)."""
    pending = {f for f in futures if f is not None and not f.done()}
    if not pending:
        return None
    if len(pending) == 1:
        return pending.pop()
    return all_done(list(pending))
