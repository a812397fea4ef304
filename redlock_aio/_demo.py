"""``python -m redlock_aio demo``: watch Redlock keep contending clients apart.

Several asyncio workers, each with its own :class:`AsyncRedlock` (they stand
for separate clients), take turns on one resource. Inside the lock each does a
read-sleep-write on a shared in-process counter: without mutual exclusion such
increments overwrite each other, so ``counter == increments`` and "at most one
holder at a time" are checked, not assumed. Each worker also times an
acquire+release of its own private resource, for an uncontended latency.

Without ``--node`` the demo starts three local redis-server nodes
(:class:`redlock_aio.testing.LocalCluster`) and always stops them again.
``rich`` (the ``demo`` extra) is imported lazily, for the live table only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import anyio

from ._errors import ConfigurationError, LockLost, LockNotAcquired, RedlockError
from ._redlock import AsyncRedlock
from .testing import LocalCluster, RedisServerNotFound, find_redis_server

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from types import TracebackType

    from rich.table import Table

#: Local nodes started when no ``--node`` is given.
LOCAL_NODES = 3
#: Longest sleep inside the critical section, between the read and the write.
MAX_CRITICAL_SLEEP = 0.002
#: Short retry delays: contention is the point, and long back-offs would leave
#: the lock idle most of the time.
RETRY_DELAY = 0.002
RETRY_DELAY_MAX = 0.05


@dataclass(frozen=True)
class DemoOptions:
    """The ``demo`` subcommand's arguments."""

    nodes: Sequence[str] = ()
    workers: int = 8
    duration: float = 5.0
    ttl: float = 2.0
    resource: str = "demo:counter"
    live: bool = True
    #: None: 0 for nodes the demo starts, the library default for given nodes.
    restart_quarantine: float | None = None

    @property
    def acquire_timeout(self) -> float:
        """How long one acquire may wait before counting as a failure."""
        return max(1.0, self.ttl)


@dataclass
class WorkerStats:
    """What one worker saw. Latencies in seconds."""

    acquired: int = 0
    increments: int = 0
    failures: int = 0
    private_failures: int = 0
    lost: int = 0
    errors: int = 0
    contended: list[float] = field(default_factory=list)
    uncontended: list[float] = field(default_factory=list)


@dataclass
class DemoState:
    """Shared by all workers: the counter the lock protects, and the holders."""

    workers: list[WorkerStats]
    counter: int = 0
    holders: int = 0
    max_holders: int = 0
    last_error: str | None = None

    def total(self, name: str) -> int:
        return sum(int(getattr(w, name)) for w in self.workers)

    def latencies(self, name: str) -> list[float]:
        return [x for w in self.workers for x in getattr(w, name)]


def run(options: DemoOptions) -> int:
    """Run the demo; the exit code: 0 if mutual exclusion held, 1 if not, 2 if
    it could not run (no redis-server binary, a node that would not start,
    invalid settings)."""
    if options.nodes:
        print(f"nodes: {len(options.nodes)} given with --node (none started)")
        return _run_on(options, list(options.nodes), None)
    try:
        binary, source = find_redis_server()
    except RedisServerNotFound as exc:
        print(f"redlock-aio demo: {exc}", file=sys.stderr)
        return 2
    print(f"redis-server: {binary} (from {source})")
    cluster = LocalCluster(LOCAL_NODES, binary=binary)
    try:
        try:
            cluster.start()
        except RuntimeError as exc:  # exited early or never answered: log tail
            print(f"redlock-aio demo: {exc}", file=sys.stderr)
            return 2
        print(f"nodes: {LOCAL_NODES} local redis-server processes started")
        for server in cluster:
            print(f"  {server.url} (pid {server.pid})")
        return _run_on(options, cluster.urls, cluster)
    finally:
        pids = [s.pid for s in cluster if s.pid is not None]
        cluster.stop()
        if pids:
            print(f"stopped the local nodes (pids {', '.join(map(str, pids))})")


def _run_on(options: DemoOptions, urls: list[str], cluster: LocalCluster | None) -> int:
    state = DemoState(workers=[WorkerStats() for _ in range(options.workers)])
    try:
        # Nodes the demo started itself cannot hold an older lock: no restart
        # quarantine for them; given nodes get the default.
        quarantine = options.restart_quarantine
        if quarantine is None and cluster is not None:
            quarantine = 0.0
        elapsed = asyncio.run(_contend(options, urls, state, quarantine))
    except ConfigurationError as exc:
        print(f"redlock-aio demo: {exc}", file=sys.stderr)
        return 2
    return _summary(options, state, elapsed, cluster)


async def _contend(
    options: DemoOptions,
    urls: list[str],
    state: DemoState,
    restart_quarantine: float | None,
) -> float:
    """Run the workers for the duration; return the seconds they actually took."""
    async with contextlib.AsyncExitStack() as stack:
        # Every worker's AsyncRedlock would log the same configuration warning
        # (e.g. a single --node): show it once.
        stack.enter_context(_once(logging.getLogger("redlock_aio")))
        redlocks = [
            await stack.enter_async_context(
                AsyncRedlock(
                    urls,
                    ttl=options.ttl,
                    retry_delay=RETRY_DELAY,
                    retry_delay_max=RETRY_DELAY_MAX,
                    restart_quarantine=restart_quarantine,
                )
            )
            for _ in range(options.workers)
        ]
        names = ", ".join(node.name for node in redlocks[0].nodes)
        print(
            f"{_plural(options.workers, 'worker')}, each with its own AsyncRedlock "
            f"over [{names}] (quorum {redlocks[0].quorum}), contend for "
            f"{options.resource!r} for {options.duration:g} s (ttl "
            f"{options.ttl:g} s, acquire timeout {options.acquire_timeout:g} s)"
        )
        start = time.monotonic()
        stop_at = start + options.duration
        with _progress(options, state) as progress:
            async with anyio.create_task_group() as outer:
                outer.start_soon(_refresh, progress, start)
                async with anyio.create_task_group() as workers:
                    for index, redlock in enumerate(redlocks):
                        workers.start_soon(
                            _worker, index, redlock, options, state, stop_at
                        )
                outer.cancel_scope.cancel()
            elapsed = time.monotonic() - start
            progress.finish(elapsed)
    return elapsed


async def _worker(
    index: int,
    redlock: AsyncRedlock,
    options: DemoOptions,
    state: DemoState,
    stop_at: float,
) -> None:
    """Until ``stop_at``: one contended critical section, then one uncontended
    acquire+release of this worker's private resource."""
    stats = state.workers[index]
    private = f"{options.resource}:{index}"
    timeout = options.acquire_timeout
    while time.monotonic() < stop_at:
        began = time.perf_counter()
        try:
            async with redlock.lock(options.resource, ttl=options.ttl, timeout=timeout):
                stats.contended.append(time.perf_counter() - began)
                stats.acquired += 1
                state.holders += 1
                state.max_holders = max(state.max_holders, state.holders)
                try:
                    value = state.counter
                    await asyncio.sleep(random.uniform(0.0, MAX_CRITICAL_SLEEP))
                    state.counter = value + 1
                    stats.increments += 1
                finally:
                    state.holders -= 1
        except LockNotAcquired as exc:
            stats.failures += 1
            state.last_error = str(exc)
        except LockLost as exc:
            stats.lost += 1
            state.last_error = str(exc)
        except RedlockError as exc:  # e.g. ReleaseError: a node misbehaved
            stats.errors += 1
            state.last_error = str(exc)

        began = time.perf_counter()
        try:
            lock = await redlock.acquire(private, ttl=options.ttl, timeout=timeout)
            await lock.release()
        except LockNotAcquired as exc:
            stats.private_failures += 1
            state.last_error = str(exc)
        except RedlockError as exc:
            stats.errors += 1
            state.last_error = str(exc)
        else:
            stats.uncontended.append(time.perf_counter() - began)


class _Once(logging.Filter):
    """Lets each distinct log message through once."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text in self._seen:
            return False
        self._seen.add(text)
        return True


@contextlib.contextmanager
def _once(logger: logging.Logger) -> Iterator[None]:
    once = _Once()
    logger.addFilter(once)
    try:
        yield
    finally:
        logger.removeFilter(once)


# -- progress display -----------------------------------------------------------


class _Progress(Protocol):
    interval: float

    def refresh(self, elapsed: float) -> None: ...

    def finish(self, elapsed: float) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


async def _refresh(progress: _Progress, start: float) -> None:
    while True:
        await asyncio.sleep(progress.interval)
        progress.refresh(time.monotonic() - start)


def _progress(options: DemoOptions, state: DemoState) -> _Progress:
    """A rich Live table when possible and wanted, else a line per second."""
    if options.live and sys.stdout.isatty():
        try:
            return _LiveTable(options, state)
        except ImportError:
            pass
    return _PlainLines(options, state)


class _PlainLines:
    """One progress line per second, for pipes, logs and ``--no-live``."""

    interval = 1.0

    def __init__(self, options: DemoOptions, state: DemoState) -> None:
        self._options = options
        self._state = state

    def refresh(self, elapsed: float) -> None:
        s = self._state
        total = s.total("acquired")
        print(
            f"[{elapsed:5.1f}/{self._options.duration:g} s] acquisitions {total} "
            f"({_rate(total, elapsed)}/s), failures {s.total('failures')}, "
            f"lost {s.total('lost')}, max holders {s.max_holders}",
            flush=True,
        )

    def finish(self, elapsed: float) -> None:
        """Nothing: the summary follows."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class _LiveTable:
    """A rich Live table of per-worker counts, refreshed four times a second.

    :raises ImportError: rich is not installed (the caller falls back).
    """

    interval = 0.25

    def __init__(self, options: DemoOptions, state: DemoState) -> None:
        from rich.live import Live

        self._options = options
        self._state = state
        # Refreshed from the event loop only: no thread reads the counters.
        self._live = Live(self._table(0.0), auto_refresh=False, transient=False)

    def _table(self, elapsed: float) -> Table:
        from rich.table import Table

        s = self._state
        total = s.total("acquired")
        table = Table(
            title=f"Redlock demo: {self._options.resource!r}",
            caption=(
                f"{elapsed:.1f}/{self._options.duration:g} s, {total} acquisitions "
                f"({_rate(total, elapsed)}/s), counter {s.counter}, "
                f"max holders {s.max_holders}"
            ),
        )
        for name in ("worker", "acquired", "failed", "lost", "p50 wait ms"):
            table.add_column(name, justify="right")
        for index, w in enumerate(s.workers):
            p50 = _percentile(w.contended, 50)
            table.add_row(
                str(index),
                str(w.acquired),
                str(w.failures + w.private_failures),
                str(w.lost),
                "-" if p50 is None else f"{p50 * 1000:.2f}",
            )
        table.add_row(
            "total",
            str(total),
            str(s.total("failures") + s.total("private_failures")),
            str(s.total("lost")),
            "",
            style="bold",
        )
        return table

    def refresh(self, elapsed: float) -> None:
        self._live.update(self._table(elapsed), refresh=True)

    def finish(self, elapsed: float) -> None:
        """Show the final counts, which stay on screen above the summary."""
        self.refresh(elapsed)

    def __enter__(self) -> Self:
        self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.__exit__(exc_type, exc, tb)


# -- summary --------------------------------------------------------------------


def _summary(
    options: DemoOptions,
    state: DemoState,
    elapsed: float,
    cluster: LocalCluster | None,
) -> int:
    """Print what happened; 0 if exclusion held and no update was lost, else 1."""
    acquired = state.total("acquired")
    increments = state.total("increments")
    failures = state.total("failures")
    private_failures = state.total("private_failures")
    errors = state.total("errors")
    no_lost_update = state.counter == increments
    exclusive = state.max_holders == 1

    if acquired == increments:
        counted = f"{acquired} acquisitions"
    else:
        counted = (
            f"{increments} completed increments ({acquired - increments} of "
            f"{acquired} acquisitions cut short by a lost lock)"
        )
    rows: list[tuple[str, str]] = [
        ("acquisitions", f"{acquired} ({_rate(acquired, elapsed)}/s)"),
        (
            "failures (LockNotAcquired)",
            (
                f"{failures + private_failures} ({failures} contended, "
                f"{private_failures} uncontended)"
            ),
        ),
        ("lost (LockLost)", str(state.total("lost"))),
        (
            "counter",
            f"{state.counter} "
            + ("==" if no_lost_update else "!=")
            + f" {counted}: "
            + ("no lost update" if no_lost_update else "LOST UPDATES"),
        ),
        (
            "max simultaneous holders",
            str(state.max_holders)
            + (
                ""
                if exclusive
                else " (no acquisition)"
                if not acquired
                else " (MUST BE 1)"
            ),
        ),
        (
            "contended acquire",
            _latency(state.latencies("contended")) + ", waiting included",
        ),
        ("uncontended acquire+release", _latency(state.latencies("uncontended"))),
    ]
    if errors:
        rows.append(("other errors", str(errors)))
    leaked = False
    if cluster is not None:
        try:
            sizes = cluster.dbsize()
        except (OSError, RuntimeError) as exc:
            clean = f"could not check: {exc}"
        else:
            leaked = any(sizes)
            verdict = "NOT CLEAN" if leaked else "clean"
            clean = f"{verdict} (DBSIZE per node: {sizes})"
    else:
        clean = "not checked (--node given: the demo only inspects nodes it started)"
    rows.append(("nodes left", clean))

    workers = _plural(options.workers, "worker")
    print(f"summary after {elapsed:.2f} s ({workers}):")
    width = max(len(label) for label, _ in rows) + 1
    for label, value in rows:
        print(f"  {label + ':':<{width}} {value}")
    if acquired == 0 and state.last_error is not None:
        print(f"  no acquisition at all; last error: {state.last_error}")
    if exclusive and no_lost_update and not leaked:
        print("result: OK, mutual exclusion held")
        return 0
    if leaked:
        print("result: FAILED, lock keys were left on the nodes")
        return 1
    if not acquired:
        print("result: FAILED, the lock was never acquired")
    else:
        print("result: FAILED, mutual exclusion did not hold")
    return 1


def _latency(samples: list[float]) -> str:
    p50, p99 = _percentile(samples, 50), _percentile(samples, 99)
    if p50 is None or p99 is None:
        return "no samples"
    return f"p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms (n={len(samples)})"


def _percentile(samples: list[float], pct: float) -> float | None:
    """Nearest-rank percentile; None without samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def _rate(count: int, elapsed: float) -> str:
    return f"{count / elapsed:.1f}" if elapsed > 0 else "-"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
