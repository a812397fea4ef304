"""The bodies of the heavy overload scenarios (7, 8a-8d), run in a child
process (``_child.py``) with a hard time limit.

Why a child: with tens of thousands of requests at once, a client can keep the
event loop busy in one turn for minutes (a blocked loop cannot honour any
asyncio timeout), and its memory and garbage would weigh on every later
scenario. The child reports its figures as it goes (:data:`P`, printed by a
watchdog thread every second, with the longest event-loop stall seen), so
that a run killed at its limit still tells how far it got.

Each body writes rows into :data:`P`: ``P["rows"]`` the finished ones
``[group, values]``, ``P["current"]`` the one under way; values whose key
starts with ``_`` are counters by kind, turned into the row's remark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import statistics
import time
from typing import TYPE_CHECKING, Any

from ._common import KEY_PREFIX
from ._floor import MuxConnection, encode
from ._peers import _redlock_kwargs

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence

    from redlock_aio import AsyncRedlock, Lock

#: The progress of the body under way (read by the watchdog thread).
P: dict[str, Any] = {"rows": [], "current": None, "beat": 0.0}


def begin(group: str, **values: Any) -> dict[str, Any]:
    """Start a row: its values dict, updated in place as the body goes."""
    row: dict[str, Any] = dict(values)
    P["current"] = [group, row]
    return row


def finish() -> None:
    if P["current"] is not None:
        P["rows"].append(P["current"])
        P["current"] = None


def bump(counter: dict[str, int], name: str) -> None:
    counter[name] = counter.get(name, 0) + 1


def new_client(urls: Sequence[Any], **kwargs: Any) -> AsyncRedlock:
    """An AsyncRedlock as the ``redlock_aio`` rows make it (quarantine off)."""
    from redlock_aio import AsyncRedlock

    return AsyncRedlock(list(urls), **{**_redlock_kwargs(), **kwargs})


# -- process figures ---------------------------------------------------------------


def status_mb(name: str) -> float | None:
    """A ``/proc/self/status`` figure (``VmRSS``, ``VmHWM``) in MB (Linux)."""
    try:
        with open("/proc/self/status") as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(rf"^{name}:\s+(\d+) kB", text, re.MULTILINE)
    return None if m is None else round(int(m.group(1)) / 1024, 1)


def rss_reset() -> tuple[float | None, bool]:
    """Reset the peak RSS to the current RSS (Linux ``clear_refs``): the RSS now
    in MB, and whether the peak was reset."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return status_mb("VmRSS"), False
    return status_mb("VmRSS"), True


class LogCount(logging.Handler):
    """Counts the ``redlock_aio`` logger's records into a row while attached:
    ``warnings`` (by message in ``_warnings``) and, with ``attempts``, the DEBUG
    line of each failed acquire attempt (``failed_attempts``)."""

    def __init__(self, row: dict[str, Any], *, attempts: bool) -> None:
        super().__init__(logging.DEBUG)
        self.row = row
        self.attempts = attempts
        row.setdefault("warnings", 0)
        row.setdefault("_warnings", {})
        if attempts:
            row.setdefault("failed_attempts", 0)

    def emit(self, record: logging.LogRecord) -> None:
        row = self.row
        if record.levelno >= logging.WARNING:
            row["warnings"] += 1
            # The message itself, not its template: which node, and why.
            bump(row["_warnings"], record.getMessage()[:120])
        elif (
            self.attempts
            and record.levelno == logging.DEBUG
            and "attempt" in str(record.msg)
        ):
            row["failed_attempts"] += 1

    @contextlib.contextmanager
    def attached(self) -> Iterator[LogCount]:
        logger = logging.getLogger("redlock_aio")
        level = logger.level
        logger.setLevel(logging.DEBUG if self.attempts else logging.WARNING)
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.setLevel(level)


async def dbsizes(urls: Sequence[str]) -> list[int]:
    out = []
    for url in urls:
        conn = await MuxConnection.open(url)
        try:
            out.append(int(await conn.request(encode(b"DBSIZE"))))
        finally:
            conn.close()
    return out


async def settled_keys(urls: Sequence[str], settle: float = 1.0) -> int:
    """The most keys on a node, polled for up to ``settle`` s while requests
    still in flight may delete some."""
    end = time.monotonic() + settle
    sizes = await dbsizes(urls)
    while any(sizes) and time.monotonic() < end:
        await asyncio.sleep(0.05)
        sizes = await dbsizes(urls)
    return max(sizes)


async def cancel_all(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait (bounded) for them."""
    pending = {t for t in tasks if not t.done()}
    for _ in range(20):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)


async def wait_all(tasks: Sequence[asyncio.Task[Any]], limit: float) -> int:
    """Wait up to ``limit`` s for ``tasks``; cancel the rest: how many."""
    if not tasks:
        return 0
    _, pending = await asyncio.wait(tasks, timeout=limit)
    await cancel_all(list(pending))
    return len(pending)


# -- 7. lock() blocks at once -----------------------------------------------------


async def storm(urls: list[str], params: dict[str, Any]) -> None:
    """``n`` lock() blocks entered at once on a cold client, then ended at once."""
    from redlock_aio import LockLost, ReleaseError

    n, enter_limit, end_limit = params["n"], params["enter_limit"], params["end_limit"]
    rss0, reset = rss_reset()
    row = begin(
        str(n), acquired=0, lost=0, errors=0, release_errors=0, _errors={}, _phase={}
    )
    rl = new_client(urls)
    loop = asyncio.get_running_loop()
    go = asyncio.Event()
    all_in: asyncio.Future[None] = loop.create_future()
    settled = 0

    def settle() -> None:
        nonlocal settled
        settled += 1
        if settled == n and not all_in.done():
            all_in.set_result(None)

    async def one(i: int) -> None:
        inside = False
        try:
            async with rl.lock(f"{KEY_PREFIX}storm:{i}"):
                inside = True
                row["acquired"] += 1
                if go.is_set():
                    bump(row["_phase"], "entered after the limit")
                settle()
                await go.wait()
        except LockLost:
            row["lost"] += 1
        except ReleaseError:
            row["release_errors"] += 1
        except Exception as exc:  # noqa: BLE001 - counted by type
            row["errors"] += 1
            where = "at exit" if inside else "entering"
            bump(row["_errors"], f"{type(exc).__name__} {where}")
            if not inside:
                settle()

    tasks: list[asyncio.Task[None]] = []
    try:
        with LogCount(row, attempts=False).attached():
            t0 = time.perf_counter()
            tasks = [loop.create_task(one(i)) for i in range(n)]
            await asyncio.wait((all_in,), timeout=enter_limit)
            if all_in.done():
                row["enter_s"] = round(time.perf_counter() - t0, 3)
            else:
                row["_phase"][f"not entered within {enter_limit:g} s"] = n - settled
            go.set()
            t1 = time.perf_counter()
            late = await wait_all(tasks, end_limit)
            if late:
                row["_phase"][f"not over within {end_limit:g} s (cancelled)"] = late
            else:
                row["end_s"] = round(time.perf_counter() - t1, 3)
            peak = status_mb("VmHWM")
            row["peak_rss_mb"] = peak if reset else None
            if peak is not None and rss0 is not None:
                row["rss_growth_mb"] = round(peak - rss0, 1)
            row["keys_left"] = await settled_keys(urls)
    finally:
        go.set()
        await cancel_all(tasks)
        await rl.aclose()
    finish()


# -- 8. bursts ----------------------------------------------------------------------


async def burst(
    rl: AsyncRedlock,
    keys: Sequence[str],
    limit: float,
    row: dict[str, Any],
    prefix: str = "",
) -> None:
    """``len(keys)`` tasks at once, each a blocking acquire of its key then its
    release; counted into ``row`` (``ok``, ``acquire_errors``,
    ``release_errors``, each name after ``prefix``), as they end."""
    from redlock_aio import ReleaseError

    ok, acquire_errors, release_errors = (
        f"{prefix}{name}" for name in ("ok", "acquire_errors", "release_errors")
    )
    for name in (ok, acquire_errors, release_errors):
        row.setdefault(name, 0)
    row.setdefault("_acquire", {})
    row.setdefault("_other", {})

    async def one(key: str) -> None:
        try:
            lock = await rl.acquire(key)
        except Exception as exc:  # noqa: BLE001 - counted by type
            row[acquire_errors] += 1
            bump(row["_acquire"], type(exc).__name__)
            return
        try:
            await lock.release()
        except ReleaseError:
            row[release_errors] += 1
        except Exception as exc:  # noqa: BLE001 - counted by type
            bump(row["_other"], f"release {type(exc).__name__}")
        else:
            row[ok] += 1

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(one(k)) for k in keys]
    late = await wait_all(tasks, limit)
    if late:
        row[acquire_errors] += late
        what = f"not over within {limit:g} s (cancelled)"
        row["_other"][what] = row["_other"].get(what, 0) + late


async def cold(urls: list[str], params: dict[str, Any]) -> None:
    """Cold client: n blocking acquires at once (own keys), then n releases."""
    from redlock_aio import ReleaseError

    n, limit = params["n"], params["limit"]
    row = begin(
        str(n), acquired=0, acquire_errors=0, released=0, release_errors=0, _errors={}
    )
    rl = new_client(urls)
    loop = asyncio.get_running_loop()
    locks: list[Lock] = []

    async def take(i: int) -> None:
        try:
            locks.append(await rl.acquire(f"{KEY_PREFIX}cold:{i}"))
        except Exception as exc:  # noqa: BLE001 - counted by type
            row["acquire_errors"] += 1
            bump(row["_errors"], f"acquire {type(exc).__name__}")
        else:
            row["acquired"] += 1

    async def give(lock: Lock) -> None:
        try:
            await lock.release()
        except ReleaseError:
            row["release_errors"] += 1
        except Exception as exc:  # noqa: BLE001 - counted by type
            bump(row["_errors"], f"release {type(exc).__name__}")
        else:
            row["released"] += 1

    try:
        with LogCount(row, attempts=True).attached():
            t0 = time.perf_counter()
            late = await wait_all([loop.create_task(take(i)) for i in range(n)], limit)
            if late:
                row["acquire_errors"] += late
                row["_errors"][f"acquire not over within {limit:g} s"] = late
            else:
                row["acquire_s"] = round(time.perf_counter() - t0, 3)
            t1 = time.perf_counter()
            late = await wait_all([loop.create_task(give(lk)) for lk in locks], limit)
            if late:
                row["_errors"][f"release not over within {limit:g} s"] = late
            else:
                row["release_s"] = round(time.perf_counter() - t1, 3)
    finally:
        await rl.aclose()
    finish()


async def warm(urls: list[str], params: dict[str, Any]) -> None:
    """Warm client: a burst of n acquire+release at once, then another."""
    n, limit = params["n"], params["limit"]
    rl = new_client(urls)
    try:
        lock = await rl.acquire(f"{KEY_PREFIX}warm")
        await lock.release()
        for k in (1, 2):
            row = begin(f"{n} #{k}")
            keys = [f"{KEY_PREFIX}warm{k}:{i}" for i in range(n)]
            with LogCount(row, attempts=True).attached():
                t0 = time.perf_counter()
                await burst(rl, keys, limit, row)
                seconds = time.perf_counter() - t0
            row["burst_s"] = round(seconds, 3)
            row["rate"] = round(row["ok"] / seconds)
            finish()
    finally:
        await rl.aclose()


async def extend(urls: list[str], params: dict[str, Any]) -> None:
    """k locks held in lock() blocks (TTL ``ttl``) while the same client runs
    bursts of ``size`` acquire+release for ``seconds``."""
    from redlock_aio import LockLost, ReleaseError

    k, size, ttl = params["k"], params["size"], params["ttl"]
    row = begin(
        f"{k} + {size}",
        held=0,
        lost=0,
        lost_in_window=0,
        held_release_errors=0,
        bursts=0,
        _held={},
    )
    rl = new_client(urls)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    all_in = asyncio.Event()
    settled = 0

    def settle() -> None:
        nonlocal settled
        settled += 1
        if settled == k:
            all_in.set()

    async def hold(i: int) -> None:
        inside = False
        try:
            async with rl.lock(f"{KEY_PREFIX}xheld:{i}", ttl=ttl):
                inside = True
                row["held"] += 1
                settle()
                await stop.wait()
        except LockLost:
            row["lost"] += 1
            if not stop.is_set():
                row["lost_in_window"] += 1
        except ReleaseError:
            row["held_release_errors"] += 1
        except Exception as exc:  # noqa: BLE001 - counted by type
            bump(row["_held"], type(exc).__name__)
            if not inside:
                settle()

    holders: list[asyncio.Task[None]] = []
    try:
        lock = await rl.acquire(f"{KEY_PREFIX}xwarm")
        await lock.release()
        holders = [loop.create_task(hold(i)) for i in range(k)]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(all_in.wait(), 60 + k / 100)
        with LogCount(row, attempts=True).attached():
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < params["seconds"]:
                keys = [f"{KEY_PREFIX}xb{row['bursts']}:{i}" for i in range(size)]
                await burst(rl, keys, params["limit"], row, "burst_")
                row["bursts"] += 1
            row["window_s"] = round(time.perf_counter() - t0, 2)
            stop.set()
            late = await wait_all(holders, 30 + k / 500)
            if late:
                row["_held"]["block not over in time (cancelled)"] = late
    finally:
        stop.set()
        await cancel_all(holders)
        await rl.aclose()
    finish()


def _vote(outcome: Any) -> str:
    vote = getattr(outcome, "vote", None)
    return str(getattr(vote, "value", vote))


async def nonblocking(urls: list[str], params: dict[str, Any]) -> None:
    """``trials`` times: a cold client, n non-blocking acquires at once."""
    from redlock_aio import LockNotAcquired, ReleaseError

    n, trials = params["n"], params["trials"]
    row = begin(
        f"{n} x{trials}",
        trials_failed=0,
        failed=0,
        max_failed=0,
        release_errors=0,
        per_trial=[],
        _votes={},
        _errors={},
    )
    seconds: list[float] = []
    loop = asyncio.get_running_loop()
    with LogCount(row, attempts=False).attached():
        for trial in range(trials):
            rl = new_client(urls)
            try:
                t0 = time.perf_counter()
                tasks = [
                    loop.create_task(
                        rl.acquire(f"{KEY_PREFIX}nb{trial}:{i}", blocking=False)
                    )
                    for i in range(n)
                ]
                await asyncio.wait(tasks)
                seconds.append(time.perf_counter() - t0)
                row["acquire_s"] = round(statistics.median(seconds), 3)
                locks = []
                failed = 0
                for t in tasks:
                    exc = t.exception()
                    if exc is None:
                        locks.append(t.result())
                        continue
                    failed += 1
                    if isinstance(exc, LockNotAcquired):
                        for o in exc.outcomes:
                            bump(row["_votes"], _vote(o))
                    else:
                        bump(row["_errors"], type(exc).__name__)
                row["per_trial"].append(failed)
                row["failed"] += failed
                row["trials_failed"] += failed > 0
                row["max_failed"] = max(row["max_failed"], failed)
                results = await asyncio.gather(
                    *(lock.release() for lock in locks), return_exceptions=True
                )
                row["release_errors"] += sum(
                    isinstance(r, ReleaseError) for r in results
                )
            finally:
                await rl.aclose()
    finish()


#: The bodies the child runs, by name.
# -- 5b. a fresh acquire beside many held locks ---------------------------------------


async def held_fresh(urls: list[str], params: dict[str, Any]) -> None:
    """``k`` locks held in ``lock()`` blocks (auto-extension, default TTL), then
    one fresh acquire+release at a time for ``seconds``: its latency, and the
    CPU it costs beyond what keeping the ``k`` costs (a window of ``seconds``
    with no cycles before it)."""
    k, seconds, limit = params["k"], params["seconds"], params["limit"]
    row = begin(str(k), held=0, lost=0)
    rl = new_client(urls)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    all_in: asyncio.Future[None] = loop.create_future()
    entered = 0
    lost: list[object] = []

    async def hold(i: int) -> None:
        nonlocal entered
        async with rl.lock(f"{KEY_PREFIX}fresh_held:{i}", on_lost=lost.append):
            entered += 1
            if entered == k and not all_in.done():
                all_in.set_result(None)
            await stop.wait()

    holders = [loop.create_task(hold(i)) for i in range(k)]
    try:
        with LogCount(row, attempts=False).attached():
            if k:
                await asyncio.wait((all_in,), timeout=limit)
            row["held"] = entered
            await asyncio.sleep(1.0)  # the entry burst's replies and garbage settle
            c0, t0 = time.process_time(), time.perf_counter()
            await asyncio.sleep(seconds)
            idle_rate = (time.process_time() - c0) / (time.perf_counter() - t0)
            row["keeping_cpu_pct"] = round(100 * idle_rate, 1)
            latencies: list[float] = []
            c0, t0 = time.process_time(), time.perf_counter()
            key = f"{KEY_PREFIX}fresh"
            while time.perf_counter() - t0 < seconds:
                s0 = time.perf_counter()
                lock = await rl.acquire(key)
                await lock.release()
                latencies.append(time.perf_counter() - s0)
            wall = time.perf_counter() - t0
            cpu = time.process_time() - c0 - idle_rate * wall
            latencies.sort()
            n = len(latencies)
            row["cycles"] = n
            row["p50_ms"] = round(1e3 * latencies[n // 2], 3)
            row["p99_ms"] = round(1e3 * latencies[min(n - 1, (99 * n) // 100)], 3)
            row["max_ms"] = round(1e3 * latencies[-1], 3)
            row["cpu_us"] = round(1e6 * cpu / n, 1)
            row["lost"] = len(lost)
    finally:
        stop.set()
        await wait_all(holders, limit)
        await rl.aclose()
    finish()


BODIES: dict[str, Callable[[list[str], dict[str, Any]], Awaitable[None]]] = {
    "held_fresh": held_fresh,
    "storm": storm,
    "cold": cold,
    "warm": warm,
    "extend": extend,
    "nonblocking": nonblocking,
}


async def with_heartbeat(body: Awaitable[None]) -> None:
    """Run ``body`` while a task stamps ``P["beat"]`` every 50 ms: the watchdog
    thread tells a stalled event loop from the age of the stamp."""

    async def beat() -> None:
        while True:
            P["beat"] = time.monotonic()
            await asyncio.sleep(0.05)

    task = asyncio.ensure_future(beat())
    try:
        await body
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
