"""The five scenarios. Each returns a :class:`~benchmarks._common.Section`.

Fairness rules, everywhere: every implementation gets the same nodes, the same
TTL (10 s) and the same Redis keys; a warm-up precedes every measured block;
implementations alternate in rounds (A, B, C, A, B, C...); after each run the
nodes are checked for leftover keys (reported), then flushed.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._common import (
    FLOOR_NAME,
    KEY_PREFIX,
    TTL,
    Column,
    LeftoverCheck,
    Plan,
    Row,
    Section,
    percentile,
    ratio,
    us,
)
from ._floor import present_on_quorum
from ._proxy import ProcessLatencyProxy

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from redlock_aio.testing import LocalCluster

    from ._common import Impl


@dataclass
class Ctx:
    """What every scenario needs."""

    plan: Plan
    impls: list[type[Impl]]
    unavailable: dict[str, str]
    clusters: dict[int, LocalCluster]
    leftovers: LeftoverCheck
    log: Callable[[str], None] = print


@dataclass
class _Samples:
    values: dict[str, list[float]] = field(default_factory=dict)
    error: str | None = None

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timed out"
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 160 else text[:157] + "..."


async def _guarded(
    ctx: Ctx,
    scenario: str,
    cls: type[Impl],
    cluster: LocalCluster,
    body: Callable[[], Awaitable[None]],
    limit: float,
    *,
    check: bool = True,
) -> str | None:
    """Run one implementation's block under a time limit, then (with ``check``)
    check that it left no key. :return: the error, if the block failed."""
    gc.collect()
    error = None
    try:
        await asyncio.wait_for(body(), limit)
    except Exception as exc:  # noqa: BLE001 - a failing peer becomes a row
        error = _describe(exc)
    except asyncio.CancelledError:
        # A library's stray CancelledError is a failed row; our own
        # cancellation (Ctrl-C) propagates. Python 3.10 cannot tell: propagate.
        cancelling = getattr(asyncio.current_task(), "cancelling", None)
        if cancelling is None or cancelling():
            raise
        error = "CancelledError escaped from the implementation"
    if error is not None:
        ctx.log(f"    {cls.name}: {error}")
    if check:
        ctx.leftovers.check(cluster, scenario, cls.name)
    return error


def _refusals(s: _Samples) -> str:
    refused = len(s.values.get("refused", []))
    return f"{refused} uncontended acquire(s) refused" if refused else ""


def _unavailable_rows(ctx: Ctx, group: str = "") -> list[Row]:
    return [
        Row(impl=name, group=group, error=reason)
        for name, reason in ctx.unavailable.items()
    ]


# -- 1. uncontended latency ------------------------------------------------------------


async def latency(ctx: Ctx) -> Section:
    """Sequential acquire+release of one key, after warm-up, at N = 1, 3, 5, 7."""
    plan = ctx.plan
    section = Section(
        key="latency",
        title="1. Uncontended acquire+release latency (µs)",
        group_header="N",
        columns=[
            Column("p50_us", "p50", "{:,.0f}", ratio=True),
            Column("p99_us", "p99", "{:,.0f}", ratio=True),
            Column("acquire_p50_us", "acquire p50", "{:,.0f}"),
            Column("samples", "samples", "{:,.0f}"),
        ],
    )
    key = KEY_PREFIX + "latency"
    for n in plan.lat_ns:
        cluster = ctx.clusters[n]
        samples = {cls.name: _Samples() for cls in ctx.impls}
        # Each implementation keeps one client for all its blocks; the blocks
        # are short and alternate, so that a burst of load on this shared
        # machine falls on every implementation alike.
        clients: dict[str, Impl] = {}
        try:
            for block in range(plan.lat_rounds):
                for cls in ctx.impls:
                    if cls.single_node and n != 1:
                        continue
                    s = samples[cls.name]
                    if s.error is not None:
                        continue

                    async def body(
                        cls: type[Impl] = cls,
                        s: _Samples = s,
                        urls: list[str] = cluster.urls,
                        first: bool = block == 0,
                        clients: dict[str, Impl] = clients,
                    ) -> None:
                        impl = clients.get(cls.name)
                        if impl is None:
                            impl = clients[cls.name] = cls(urls)
                        for _ in range(plan.lat_warmup if first else 0):
                            handle = await impl.acquire(key, TTL)
                            if handle is not None:
                                await impl.release(handle)
                        for _ in range(plan.lat_iters):
                            t0 = time.perf_counter()
                            handle = await impl.acquire(key, TTL)
                            t1 = time.perf_counter()
                            if handle is None:
                                s.add("refused", 1)
                                continue
                            await impl.release(handle)
                            t2 = time.perf_counter()
                            s.add("cycle", t2 - t0)
                            s.add("acquire", t1 - t0)

                    s.error = await _guarded(
                        ctx, "latency", cls, cluster, body, 120, check=False
                    )
        finally:
            for name, impl in clients.items():
                cls = next(c for c in ctx.impls if c.name == name)

                async def close(impl: Impl = impl) -> None:
                    await impl.aclose()

                error = await _guarded(ctx, "latency", cls, cluster, close, 60)
                if error is not None and samples[name].error is None:
                    samples[name].error = error
        for cls in ctx.impls:
            s = samples[cls.name]
            if cls.single_node and n != 1:
                section.rows.append(
                    Row(cls.name, str(n), note="n/a: single node", error="n/a")
                )
                continue
            cycle, acq = s.values.get("cycle", []), s.values.get("acquire", [])
            section.rows.append(
                Row(
                    cls.name,
                    str(n),
                    {
                        "p50_us": us(percentile(cycle, 50)),
                        "p99_us": us(percentile(cycle, 99)),
                        "acquire_p50_us": us(percentile(acq, 50)),
                        "samples": float(len(cycle)),
                    },
                    note=cls.describe(),
                    error=s.error,
                    remark=_refusals(s),
                )
            )
        ctx.log(f"  latency N={n} done")
    section.rows += _unavailable_rows(ctx)
    growth = _growth(section, plan.lat_ns)
    floor = growth.get(FLOOR_NAME)
    section.derived["per_node_growth_us"] = {
        name: {"us": g, "ratio_to_mux_floor": ratio(g, floor)}
        for name, g in growth.items()
    }
    section.notes.append(
        "Per-node growth: (p50 at N=7 - p50 at N=3) / 4, µs per added node: "
        + ", ".join(f"{name} {g:+.0f}" for name, g in growth.items() if g is not None)
    )
    return section


def _growth(section: Section, ns: Sequence[int]) -> dict[str, float | None]:
    if 3 not in ns or 7 not in ns:
        return {}
    out: dict[str, float | None] = {}
    for row in section.rows:
        if row.group != "7" or row.error is not None:
            continue
        at3 = next(r for r in section.rows if r.impl == row.impl and r.group == "3")
        p3, p7 = at3.values.get("p50_us"), row.values.get("p50_us")
        out[row.impl] = None if p3 is None or p7 is None else round((p7 - p3) / 4, 1)
    return out


# -- 2. throughput ---------------------------------------------------------------------


async def throughput(ctx: Ctx) -> Section:
    """64 tasks on distinct keys for a fixed time, N=3: locks per second."""
    return await throughput_section(
        ctx, ctx.plan.tp_tasks, ctx.plan.tp_seconds, key="throughput", number="2"
    )


async def throughput_section(
    ctx: Ctx, tasks: int, seconds: float, *, key: str, number: str
) -> Section:
    """``tasks`` tasks on distinct keys, rounds of ``seconds``, N=3: locks per
    second (scenario 2, and 2b with 256 tasks)."""
    plan = ctx.plan
    cluster = ctx.clusters[3]
    section = Section(
        key=key,
        title=f"{number}. Throughput: {tasks} tasks, distinct keys, N=3 (locks/s)",
        group_header="N",
        columns=[
            Column("locks_per_s", "locks/s", "{:,.0f}", ratio=True),
            Column("min_round", "worst round", "{:,.0f}"),
            Column("max_round", "best round", "{:,.0f}"),
            Column("refused", "refused", "{:,.0f}"),
        ],
    )
    samples = {cls.name: _Samples() for cls in ctx.impls}
    keys = [f"{KEY_PREFIX}tp:{i}" for i in range(tasks)]
    for _ in range(plan.tp_rounds):
        for cls in ctx.impls:
            s = samples[cls.name]
            if s.error is not None:
                continue

            async def body(
                cls: type[Impl] = cls, s: _Samples = s, urls: list[str] = cluster.urls
            ) -> None:
                impl = cls(urls)
                try:
                    await _run_throughput(impl, keys, seconds, s)
                finally:
                    await impl.aclose()

            s.error = await _guarded(ctx, key, cls, cluster, body, 60 + seconds)
    for cls in ctx.impls:
        s = samples[cls.name]
        r = s.values.get("rate", [])
        warm = len(s.values.get("warm_refused", []))
        section.rows.append(
            Row(
                cls.name,
                "3",
                {
                    "locks_per_s": statistics.median(r) if r else None,
                    "min_round": min(r) if r else None,
                    "max_round": max(r) if r else None,
                    "refused": float(sum(s.values.get("refused", []))),
                },
                note=cls.describe(),
                error=s.error,
                remark=f"{warm} refused during warm-up (cold connections)"
                if warm
                else "",
            )
        )
    section.rows += _unavailable_rows(ctx, "3")
    section.notes.append(
        f"{plan.tp_rounds} round(s) of {seconds:g} s per implementation "
        "after a warm-up cycle per task; locks/s = completed acquire+release "
        "cycles / wall time (median of the rounds, which alternate between "
        "implementations). refused: single attempts that got no "
        "quorum although no one else held the key (e.g. a node timeout under load)."
    )
    return section


async def _run_throughput(
    impl: Impl, keys: Sequence[str], seconds: float, s: _Samples
) -> None:
    refused = 0

    async def worker(key: str, until: float | None) -> int:
        """Cycles until ``until``; one attempt when None (warm-up)."""
        nonlocal refused
        done = attempts = 0
        while (until is None and attempts < 1) or (
            until is not None and time.perf_counter() < until
        ):
            attempts += 1
            handle = await impl.acquire(key, TTL)
            if handle is None:
                refused += 1
                continue
            await impl.release(handle)
            done += 1
        return done

    await asyncio.gather(*(worker(k, None) for k in keys))  # warm-up
    for _ in range(refused):
        s.add("warm_refused", 1)
    refused = 0
    gc.collect()
    start = time.perf_counter()
    counts = await asyncio.gather(*(worker(k, start + seconds) for k in keys))
    s.add("rate", sum(counts) / (time.perf_counter() - start))
    s.add("refused", refused)


# -- 3. contention handoff -------------------------------------------------------------


@dataclass
class _Handoff:
    key: str
    target: int
    hold: float
    holder: int | None = None
    holders_now: int = 0
    max_holders: int = 0
    releaser: int | None = None
    release_start: float = 0.0
    handoffs: list[float] = field(default_factory=list)
    final: tuple[int, object] | None = None
    ignored_cancel: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


async def contention(ctx: Ctx) -> Section:
    """16 workers, each its own client, contend for one key (N=3)."""
    plan = ctx.plan
    cluster = ctx.clusters[3]
    waiters = plan.ho_workers - 1
    section = Section(
        key="contention",
        title=(
            f"3. Contention: {plan.ho_workers} workers (one client each), one key, N=3"
        ),
        group_header="N",
        columns=[
            Column("handoff_p50_ms", "handoff p50 ms", "{:,.1f}", ratio=True),
            Column("handoff_p99_ms", "handoff p99 ms", "{:,.1f}", ratio=True),
            Column("wait_cpu_pct", f"CPU % ({waiters} waiting)", "{:,.1f}", ratio=True),
            Column("handoffs", "handoffs", "{:,.0f}"),
            Column("max_holders", "max holders", "{:,.0f}"),
        ],
    )
    handoffs: dict[str, list[float]] = {cls.name: [] for cls in ctx.impls}
    cpu: dict[str, list[float]] = {cls.name: [] for cls in ctx.impls}
    max_holders: dict[str, int] = {cls.name: 0 for cls in ctx.impls}
    ignored: dict[str, int] = {cls.name: 0 for cls in ctx.impls}
    errors: dict[str, str | None] = {cls.name: None for cls in ctx.impls}
    for _ in range(plan.ho_rounds):
        for cls in ctx.impls:
            if errors[cls.name] is not None:
                continue

            async def body(cls: type[Impl] = cls) -> None:
                state, cpu_share = await _run_contention(cls, cluster.urls, plan)
                handoffs[cls.name] += state.handoffs
                cpu[cls.name].append(cpu_share)
                max_holders[cls.name] = max(max_holders[cls.name], state.max_holders)
                ignored[cls.name] += state.ignored_cancel

            errors[cls.name] = await _guarded(
                ctx, "contention", cls, cluster, body, 30 + plan.ho_handoffs * 2
            )
    for cls in ctx.impls:
        h = handoffs[cls.name]
        section.rows.append(
            Row(
                cls.name,
                "3",
                {
                    "handoff_p50_ms": percentile(h, 50) * 1e3 if h else None,
                    "handoff_p99_ms": percentile(h, 99) * 1e3 if h else None,
                    "wait_cpu_pct": statistics.fmean(cpu[cls.name]) * 100
                    if cpu[cls.name]
                    else None,
                    "handoffs": float(len(h)),
                    "max_holders": float(max_holders[cls.name]),
                },
                note=cls.describe(),
                error=errors[cls.name],
                remark=f"{ignored[cls.name]} waiter(s) ignored the first cancel() "
                "at the end"
                if ignored[cls.name]
                else "",
            )
        )
    section.rows += _unavailable_rows(ctx, "3")
    section.notes += [
        (
            "Handoff: from the holder's release() call to the next acquire "
            "returning in a different worker. Each library waits with its own "
            "default retry policy; the floors retry after a random 25-50 ms."
        ),
        (
            "CPU: process CPU time / wall time while one worker holds the lock "
            f"for {plan.ho_cpu_window:g} s and {waiters} wait (100 % = one core)."
        ),
        (
            "max holders: most workers that believed they held the lock at once "
            "(1 = mutual exclusion held)."
        ),
    ]
    return section


async def _run_contention(
    cls: type[Impl], urls: Sequence[str], plan: Plan
) -> tuple[_Handoff, float]:
    clients = [cls(urls) for _ in range(plan.ho_workers)]
    state = _Handoff(KEY_PREFIX + "contended", plan.ho_handoffs, plan.ho_hold)
    tasks: list[asyncio.Task[None]] = []
    try:
        for i, impl in enumerate(clients):  # warm-up: connections, scripts
            handle = await impl.acquire(f"{KEY_PREFIX}warm:{i}", TTL)
            if handle is not None:
                await impl.release(handle)
        first = await clients[0].acquire_wait(state.key, TTL)
        _took(state, 0)
        tasks = [
            asyncio.create_task(_worker(state, i, impl, None))
            for i, impl in enumerate(clients)
            if i
        ]
        await asyncio.sleep(0.05)  # every waiter has made its first attempt
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(plan.ho_cpu_window)
        cpu_share = (time.process_time() - cpu0) / (time.perf_counter() - t0)
        tasks.append(asyncio.create_task(_worker(state, 0, clients[0], first)))
        await state.done.wait()
        # Losers of the last round may still be undoing their partial SETs.
        await asyncio.sleep(0.1)
    finally:
        state.ignored_cancel = await _cancel_all(tasks)
        if state.final is not None:
            i, handle = state.final
            await clients[i].release(handle)
        for impl in clients:
            await impl.aclose()
    return state, cpu_share


async def _cancel_all(tasks: Sequence[asyncio.Task[Any]]) -> int:
    """Cancel ``tasks`` and wait for them; cancel again those that swallowed the
    cancellation (seen with redis-py). :return: how many needed more than one."""
    pending = {t for t in tasks if not t.done()}
    stubborn: set[asyncio.Task[Any]] = set()
    for attempt in range(20):
        for task in pending:
            task.cancel()
        if not pending:
            break
        _, pending = await asyncio.wait(pending, timeout=0.5)
        if attempt == 0:
            stubborn = set(pending)
    await asyncio.gather(*tasks, return_exceptions=True)
    return len(stubborn)


def _took(state: _Handoff, i: int) -> None:
    state.holders_now += 1
    state.max_holders = max(state.max_holders, state.holders_now)
    state.holder = i


async def _worker(state: _Handoff, i: int, impl: Impl, handle: object | None) -> None:
    """Acquire, hold briefly, release, wait for someone else to take it, again.
    The worker that completes the last handoff keeps the lock (no waiter is
    cancelled while the key is free, so no cancelled SET can land)."""
    while True:
        if handle is None:
            handle = await impl.acquire_wait(state.key, TTL)
            now = time.perf_counter()
            if state.releaser is not None and state.releaser != i:
                state.handoffs.append(now - state.release_start)
            async with state.changed:
                _took(state, i)
                state.changed.notify_all()
            if len(state.handoffs) >= state.target:
                state.final = (i, handle)
                state.done.set()
                return
        await asyncio.sleep(state.hold)
        state.holders_now -= 1
        state.releaser, state.release_start = i, time.perf_counter()
        await impl.release(handle)
        handle = None
        async with state.changed:
            await state.changed.wait_for(lambda: state.holder != i)


# -- 4. slow node ----------------------------------------------------------------------


async def slow_node(ctx: Ctx) -> Section:
    """N=3 with one node behind a +50 ms proxy, against the same without."""
    plan = ctx.plan
    cluster = ctx.clusters[3]
    ms = plan.slow_latency * 1e3
    section = Section(
        key="slow_node",
        title=f"4. One slow node (+{ms:g} ms), N=3: acquire latency (ms)",
        group_header="N",
        columns=[
            Column("acquire_p50_ms", "p50 normal", "{:,.2f}", ratio=True),
            Column("slow_acquire_p50_ms", "p50 slow node", "{:,.2f}", ratio=True),
            Column("slow_acquire_p99_ms", "p99 slow node", "{:,.1f}"),
            Column("slow_cycle_p50_ms", "acquire+release p50 slow", "{:,.1f}"),
        ],
    )
    key = KEY_PREFIX + "slow"
    impls = [cls for cls in ctx.impls if not cls.single_node]
    samples = {cls.name: _Samples() for cls in impls}
    with ProcessLatencyProxy(
        cluster[0].host, cluster[0].port, plan.slow_latency
    ) as proxy:
        slow_urls = [proxy.url, *cluster.urls[1:]]
        for _ in range(plan.slow_rounds):
            for cls in impls:
                s = samples[cls.name]
                if s.error is not None:
                    continue

                async def body(cls: type[Impl] = cls, s: _Samples = s) -> None:
                    for label, urls, iters in (
                        ("normal", cluster.urls, plan.slow_iters * 5),
                        ("slow", slow_urls, plan.slow_iters),
                    ):
                        impl = cls(urls)
                        try:
                            for i in range(iters + 1):  # 1 warm-up cycle
                                t0 = time.perf_counter()
                                handle = await impl.acquire(key, TTL)
                                t1 = time.perf_counter()
                                if handle is None:
                                    s.add("refused", 1)
                                    continue
                                await impl.release(handle)
                                if i >= 1:
                                    s.add(f"{label}_acquire", t1 - t0)
                                    s.add(f"{label}_cycle", time.perf_counter() - t0)
                        finally:
                            await impl.aclose()

                s.error = await _guarded(ctx, "slow_node", cls, cluster, body, 60)
    for cls in impls:
        s = samples[cls.name]
        v = s.values

        def ms_at(name: str, q: float, v: dict[str, list[float]] = v) -> float | None:
            xs = v.get(name)
            return round(percentile(xs, q) * 1e3, 3) if xs else None

        section.rows.append(
            Row(
                cls.name,
                "3",
                {
                    "acquire_p50_ms": ms_at("normal_acquire", 50),
                    "slow_acquire_p50_ms": ms_at("slow_acquire", 50),
                    "slow_acquire_p99_ms": ms_at("slow_acquire", 99),
                    "slow_cycle_p50_ms": ms_at("slow_cycle", 50),
                },
                note=cls.describe(),
                error=s.error,
                remark=_refusals(s),
            )
        )
    section.rows += [
        Row(cls.name, "3", error="n/a: single node")
        for cls in ctx.impls
        if cls.single_node
    ]
    section.rows += _unavailable_rows(ctx, "3")
    section.notes.append(
        f"Node 1 of 3 behind a loopback forwarder adding {ms:g} ms to each request "
        "(a child process, off this process's GIL). A client that decides at quorum "
        "(2 of 3) does not wait for it; one that waits for every node pays the full "
        "delay."
    )
    return section


# -- 5. many held locks ----------------------------------------------------------------


async def held_locks(ctx: Ctx) -> Section:
    """K locks held under auto-extension (TTL 10 s) for a while, N=3."""
    plan = ctx.plan
    cluster = ctx.clusters[3]
    section = Section(
        key="held_locks",
        title=(
            f"5. Many held locks under auto-extension, TTL {TTL:g} s, "
            f"{plan.hold_seconds:g} s, N=3"
        ),
        group_header="K",
        columns=[
            Column("held", "held", "{:,.0f}"),
            Column("cpu_pct", "client CPU %", "{:,.1f}", ratio=True),
            Column("lost", "lost", "{:,.0f}"),
            Column("missing", "missing at end", "{:,.0f}"),
            Column("end_errors", "release errors", "{:,.0f}"),
            Column("acquire_all_s", "acquire all, s", "{:,.2f}"),
        ],
    )
    holders = [cls for cls in ctx.impls if cls.can_hold]
    for k in plan.hold_ks:
        for cls in holders:
            values: dict[str, Any] = {}

            async def body(
                cls: type[Impl] = cls, k: int = k, values: Any = values
            ) -> None:
                values.update(await _run_hold(cls, cluster.urls, k, plan.hold_seconds))

            limit = plan.hold_seconds + sum(hold_limits(k)) + 30
            error = await _guarded(ctx, "held_locks", cls, cluster, body, limit)
            errors = values.pop("errors", "")
            row = Row(cls.name, str(k), values, cls.describe(), error)
            row.remark = f"at the end: {errors}" if errors else ""
            section.rows.append(row)
            ctx.log(f"  held K={k} {cls.name} done")
        section.rows += [
            Row(cls.name, str(k), error=cls.no_hold)
            for cls in ctx.impls
            if not cls.can_hold
        ]
        section.rows += _unavailable_rows(ctx, str(k))
    section.notes += [
        (
            "held: locks held when the window starts (all K, unless some could "
            "not be taken in time). CPU: process CPU time / wall time over the "
            "window (100 % = one core). lost: locks the library reported lost; "
            "missing: held keys not present on a majority of nodes at the end of "
            "the window; release errors: holds that ended with an error (or not "
            "in time) when released, 256 at a time."
        ),
        (
            "Extension cadence: floor and redlock_aio every TTL/3; aioredlock's "
            "watchdog at 0.6 x TTL (fewer extensions, so less work by design)."
        ),
    ]
    return section


#: Acquisitions in flight at once while taking the K locks of scenario 5.
HOLD_IN_FLIGHT = 256


def hold_limits(k: int) -> tuple[float, float]:
    """Seconds allowed to take K locks, and to release them at the end."""
    return 20 + k / 250, 20 + k / 500


async def _run_hold(
    cls: type[Impl], urls: Sequence[str], k: int, seconds: float
) -> dict[str, Any]:
    """Take K locks in K tasks (at most HOLD_IN_FLIGHT acquisitions at a time),
    hold them ``seconds``, release them HOLD_IN_FLIGHT at a time."""
    impl = cls(urls)
    keys = [f"{KEY_PREFIX}held:{i}" for i in range(k)]
    acquire_limit, release_limit = hold_limits(k)
    stops = [asyncio.Event() for _ in keys]
    held: set[str] = set()
    gate = asyncio.Semaphore(HOLD_IN_FLIGHT)

    async def one(key: str, stop: asyncio.Event) -> bool:
        await gate.acquire()
        waiting = True

        def ready() -> None:
            nonlocal waiting
            held.add(key)
            waiting = False
            gate.release()

        try:
            return await impl.hold(key, TTL, stop, ready)
        finally:
            if waiting:
                gate.release()

    tasks: list[asyncio.Task[bool]] = []
    try:
        t0 = time.perf_counter()
        tasks = [
            asyncio.create_task(one(key, stop))
            for key, stop in zip(keys, stops, strict=True)
        ]
        while time.perf_counter() < t0 + acquire_limit:
            if (
                sum(key in held or t.done() for key, t in zip(keys, tasks, strict=True))
                >= k
            ):
                break
            await asyncio.sleep(0.05)
        acquire_all = time.perf_counter() - t0
        at_start = len(held)
        gc.collect()
        cpu0, w0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        cpu_share = (time.process_time() - cpu0) / (time.perf_counter() - w0)
        held_keys = sorted(held)
        present = await present_on_quorum(urls, held_keys)
        release_by = time.perf_counter() + release_limit
        for i in range(0, k, HOLD_IN_FLIGHT):
            for stop in stops[i : i + HOLD_IN_FLIGHT]:
                stop.set()
            left = release_by - time.perf_counter()
            if left > 0:
                await asyncio.wait(tasks[i : i + HOLD_IN_FLIGHT], timeout=left)
    finally:
        for stop in stops:
            stop.set()
        await _cancel_all(tasks)
        await impl.aclose()
    finished = [t for t in tasks if t.done() and not t.cancelled()]
    failed = [t for t in finished if t.exception() is not None]
    errors = collections.Counter(type(t.exception()).__name__ for t in failed)
    lost = sum(t.exception() is None and t.result() is True for t in finished)
    cancelled = sum(t.cancelled() for t in tasks)
    if cancelled:
        errors["not over in time (cancelled)"] = cancelled
    return {
        "held": float(at_start),
        "cpu_pct": round(cpu_share * 100, 2),
        "lost": float(lost),
        "missing": float(len(held_keys) - present),
        "end_errors": float(sum(errors.values())),
        "acquire_all_s": round(acquire_all, 3),
        "errors": ", ".join(f"{n} {name}" for name, n in errors.most_common(3)),
    }


SCENARIOS: dict[str, Callable[[Ctx], Awaitable[Section]]] = {
    "latency": latency,
    "throughput": throughput,
    "contention": contention,
    "slow_node": slow_node,
    "held_locks": held_locks,
}
