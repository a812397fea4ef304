"""Overload scenarios: what many tasks at once cost redlock_aio, and what fails.

- 2b ``throughput_256``: scenario 2 with 256 tasks (every implementation).
- 5b ``held_fresh``: a fresh acquire+release beside 100,000 held locks under
  auto-extension, against none held: worst latency and CPU per cycle.
- 6 ``fake_cpu``: Python CPU per acquire+release on an in-process fake
  transport (``_fake.py``), redlock_aio against the mux floor, with GC figures.
- 7 ``storm``: 100,000 ``lock()`` blocks entered at once on a cold client, then
  ended at once.
- 8a-8e ``burst_*``, ``hung_refusal``: bursts of acquires on cold and warm
  clients, held locks under auto-extension beside bursts, non-blocking
  acquires at once on a cold client, and a refusal that should not wait for a
  hung node.

Only redlock_aio's public API is used (``AsyncRedlock``, ``Lock``,
``LockContext``, ``MuxNode``, its errors, ``redlock_aio.testing``), plus the
one connection hook ``MuxNode._create`` for the fake transport, so that the
same scenarios run against any version of the library that keeps those. Every
client is made as the ``redlock_aio`` row of the other scenarios makes it:
default settings, restart quarantine off (the harness has just started the
nodes). The ``redlock_aio`` logger's warnings (and, in the bursts, its DEBUG
line per failed acquire attempt, documented in the README) are counted while a
scenario runs. 7 and 8a-8d run in a child process under a hard time limit
(:func:`run_child`; bodies in ``_bursts.py``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._bursts import new_client
from ._common import KEY_PREFIX, TTL, Column, Row, Section
from ._fake import (
    FakeMuxFloor,
    FakeMuxNode,
    FakeServer,
    FakeTransport,
    fake_servers,
    fake_urls,
)
from ._floor import RELEASE_LUA, RELEASE_SHA, MuxFloor, encode
from ._peers import RedlockAio
from ._scenarios import (
    SCENARIOS as BASE_SCENARIOS,
    Ctx,
    _describe,
    _guarded,
    throughput_section,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from redlock_aio.testing import LocalCluster

    from ._common import Impl

LIB = RedlockAio.name
HERE = Path(__file__).resolve().parent


def _lib_selected(ctx: Ctx) -> bool:
    return RedlockAio in ctx.impls


def _not_selected(section: Section, group: str) -> None:
    section.rows.append(
        Row(LIB, group, error="redlock_aio not selected (--impl)"),
    )


def _counts(counter: collections.Counter[str], n: int = 3) -> str:
    return ", ".join(f"{c} {name}" for name, c in counter.most_common(n))


def _default_node_timeout(ttl: float) -> float:
    """The documented default per-node timeout: 5% of the TTL, at most 1 s."""
    return min(0.05 * ttl, 1.0)


def _vote(outcome: Any) -> str:
    vote = getattr(outcome, "vote", None)
    return str(getattr(vote, "value", vote))


# -- 2b. throughput with 256 tasks -------------------------------------------------


async def throughput_256(ctx: Ctx) -> Section:
    """Scenario 2's method with 256 tasks, in full-mode windows."""
    plan = ctx.plan
    section = await throughput_section(
        ctx,
        plan.tp_big_tasks,
        plan.tp_big_seconds,
        key="throughput_256",
        number="2b",
    )
    section.notes.append(
        f"Scenario 2 with {plan.tp_big_tasks} tasks instead of {plan.tp_tasks}, "
        f"in {plan.tp_big_seconds:g} s windows in every mode. Peers on redis-py "
        "use their default pools (redis-py 8: 100 connections, beyond which a "
        "request fails with MaxConnectionsError)."
    )
    return section


# -- 6. Python CPU per cycle on a fake transport -----------------------------------


class _FakeRedlockAio(RedlockAio):
    """The ``redlock_aio`` adapter over :class:`FakeMuxNode` nodes."""

    def __init__(self, urls: Sequence[str], servers: Sequence[FakeServer]) -> None:
        self._servers = list(servers)  # before __init__, which calls _nodes()
        super().__init__(urls)

    def _nodes(self) -> list[Any]:
        return [
            FakeMuxNode.make(url, server)
            for url, server in zip(self.urls, self._servers, strict=True)
        ]


@dataclass
class _CpuRun:
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    cycles: int = 0
    refused: int = 0
    gen0: int = 0
    gen2: int = 0
    freed: int | None = None


async def _cycles(impl: Impl, tasks: int, cycles: int) -> tuple[int, int]:
    """``cycles`` acquire+release cycles in ``tasks`` tasks (own key each):
    (cycles done, refusals)."""
    per = math.ceil(cycles / tasks)
    refused = 0

    async def worker(key: str) -> None:
        nonlocal refused
        for _ in range(per):
            handle = await impl.acquire(key, TTL)
            if handle is None:
                refused += 1
                continue
            await impl.release(handle)

    keys = [f"{KEY_PREFIX}cpu:{i}" for i in range(tasks)]
    if tasks == 1:
        await worker(keys[0])
    else:
        await asyncio.gather(*(worker(k) for k in keys))
    return per * tasks - refused, refused


async def _timed(impl: Impl, tasks: int, cycles: int, run: _CpuRun) -> None:
    gc.collect()
    g0 = [s["collections"] for s in gc.get_stats()]
    c0, w0 = time.process_time(), time.perf_counter()
    done, refused = await _cycles(impl, tasks, cycles)
    c1, w1 = time.process_time(), time.perf_counter()
    g1 = [s["collections"] for s in gc.get_stats()]
    n = done + refused
    run.cpu.append((c1 - c0) / n * 1e6)
    run.wall.append((w1 - w0) / n * 1e6)
    run.cycles += done
    run.refused += refused
    run.gen0 += g1[0] - g0[0]
    run.gen2 += g1[2] - g0[2]


async def _gc_freed(impl: Impl, tasks: int, cycles: int) -> int:
    """Objects ``gc.collect()`` frees after ``cycles`` cycles with GC off: the
    reference cycles the cycles left behind."""
    gc.collect()
    gc.disable()
    try:
        await _cycles(impl, tasks, cycles)
    finally:
        freed = gc.collect()
        gc.enable()
    return freed


def _fake_nodes_alone(cycles: int) -> float:
    """CPU µs per cycle of the fake nodes' own work (parse, run, encode) for the
    floor's commands of one cycle on 3 nodes (SET NX PX, EVALSHA release)."""
    loop = asyncio.get_running_loop()
    servers = fake_servers(3)
    transports = [FakeTransport(s, asyncio.Protocol(), loop) for s in servers]
    for t in transports:
        t.handle(encode(b"SCRIPT", b"LOAD", RELEASE_LUA.encode()))
    token = b"t" * 20
    sets = [
        encode(b"SET", f"{KEY_PREFIX}cpu:{i}".encode(), token, b"NX", b"PX", b"10000")
        for i in range(64)
    ]
    rels = [
        encode(b"EVALSHA", RELEASE_SHA, b"1", f"{KEY_PREFIX}cpu:{i}".encode(), token)
        for i in range(64)
    ]
    gc.collect()
    c0 = time.process_time()
    for i in range(cycles):
        s, r = sets[i % 64], rels[i % 64]
        for t in transports:
            t.handle(s)
        for t in transports:
            t.handle(r)
    return (time.process_time() - c0) / cycles * 1e6


async def fake_cpu(ctx: Ctx) -> Section:
    """CPU per acquire+release, redlock_aio vs the mux floor, on the fake
    transport (no sockets), N=3: 1 task, then 64 tasks."""
    plan = ctx.plan
    section = Section(
        key="fake_cpu",
        title=(
            "6. Python CPU per acquire+release on an in-process fake transport "
            "(no sockets), N=3 (µs)"
        ),
        group_header="tasks",
        columns=[
            Column("cpu_us", "CPU µs/cycle", "{:,.1f}", ratio=True),
            Column("net_us", "minus fake nodes", "{:,.1f}", ratio=True),
            Column("wall_us", "wall µs/cycle", "{:,.1f}"),
            Column("cycles", "cycles", "{:,.0f}"),
            Column("gen0", "gen-0 GCs", "{:,.0f}"),
            Column("gen2", "gen-2 GCs", "{:,.0f}"),
            Column("freed", f"gc frees after {plan.cpu_gc_cycles:,} (GC off)"),
            Column("freed_per_cycle", "freed/cycle", "{:,.2f}"),
        ],
    )
    urls = fake_urls(3)
    makers: list[tuple[str, Callable[[list[FakeServer]], Impl]]] = [
        (MuxFloor.name, lambda servers: FakeMuxFloor(urls, servers))
    ]
    if _lib_selected(ctx):
        makers.append((LIB, lambda servers: _FakeRedlockAio(urls, servers)))
    groups = (1, plan.cpu_tasks)
    runs = {(name, g): _CpuRun() for name, _ in makers for g in groups}
    errors: dict[str, str] = {}
    servers: dict[str, list[FakeServer]] = {name: [] for name, _ in makers}

    async def session(name: str, make: Callable[[list[FakeServer]], Impl]) -> Impl:
        """A fresh client on fresh fake nodes, warmed up (only one is open at
        a time: no other client's timers or garbage in its figures)."""
        nodes = fake_servers(3)
        servers[name] += nodes
        impl = make(nodes)
        try:
            await _cycles(impl, plan.cpu_tasks, 2_000)  # warm-up
        except BaseException:
            await impl.aclose()
            raise
        return impl

    for phase in range(plan.cpu_rounds + 1):  # the last one: GC off
        for g in groups:
            for name, make in makers:
                if name in errors:
                    continue
                try:
                    impl = await session(name, make)
                    try:
                        if phase < plan.cpu_rounds:
                            await _timed(impl, g, plan.cpu_cycles, runs[name, g])
                        else:
                            runs[name, g].freed = await _gc_freed(
                                impl, g, plan.cpu_gc_cycles
                            )
                    finally:
                        await impl.aclose()
                except Exception as exc:  # noqa: BLE001 - becomes a row
                    errors[name] = _describe(exc)
    fake_us = _fake_nodes_alone(plan.cpu_cycles)
    for g in groups:
        for name, _ in makers:
            run = runs[name, g]
            cpu = statistics.median(run.cpu) if run.cpu else None
            unknown: collections.Counter[str] = collections.Counter()
            for server in servers[name]:
                unknown += server.unknown
            remark = []
            if run.refused:
                remark.append(f"{run.refused} refused")
            if unknown:
                remark.append(f"fake node did not know: {_counts(unknown)}")
            section.rows.append(
                Row(
                    name,
                    str(g),
                    {
                        "cpu_us": None if cpu is None else round(cpu, 1),
                        "net_us": None if cpu is None else round(cpu - fake_us, 1),
                        "wall_us": round(statistics.median(run.wall), 1)
                        if run.wall
                        else None,
                        "cycles": float(run.cycles),
                        "gen0": float(run.gen0),
                        "gen2": float(run.gen2),
                        "freed": None if run.freed is None else float(run.freed),
                        "freed_per_cycle": None
                        if run.freed is None
                        else round(run.freed / plan.cpu_gc_cycles, 3),
                    },
                    note="on the fake transport (_fake.py)",
                    error=errors.get(name),
                    remark="; ".join(remark),
                )
            )
        section.rows.append(
            Row(
                "fake nodes alone",
                str(g),
                {"cpu_us": round(fake_us, 1)},
                note="the 3 fake nodes' work for one floor cycle, measured alone",
            )
        )
    if not _lib_selected(ctx):
        _not_selected(section, "1")
    section.derived["fake_nodes_us_per_cycle"] = round(fake_us, 2)
    section.notes += [
        (
            "Every connection is an in-process fake transport: each write is "
            "parsed and answered by a fake node (a dict) and its replies "
            "delivered by one loop.call_soon(data_received); redlock_aio runs "
            "its own MuxNode code on it (only MuxNode._create replaced), the "
            "floor its own protocol class. CPU = time.process_time() per cycle "
            f"(median of {plan.cpu_rounds} round(s) of {plan.cpu_cycles:,} "
            "cycles, GC on, after a warm-up); both figures include the fake "
            f"nodes' work, about {fake_us:.1f} µs per cycle measured alone "
            "('minus fake nodes' takes it off)."
        ),
        (
            "gen-0/gen-2 GCs: collections during the timed rounds. gc frees: "
            f"objects gc.collect() found unreachable after {plan.cpu_gc_cycles:,} "
            "cycles run with GC disabled (reference cycles left per cycle)."
        ),
    ]
    return section


# -- the heavy scenarios, in a child process ---------------------------------------


@dataclass
class ChildRun:
    """What a child reported: its rows (the last one partial if it was
    killed), the longest event-loop stall per row, why it failed."""

    rows: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    stalls: dict[str, float] = field(default_factory=dict)
    partial: str | None = None
    error: str | None = None
    seconds: float = 0.0


def _loop_name() -> str:
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"


async def run_child(
    body: str, urls: Sequence[str], params: dict[str, Any], hard_limit: float
) -> ChildRun:
    """Run ``_bursts.BODIES[body]`` in a child process (same interpreter, same
    event loop kind) and collect its report; kill it at ``hard_limit`` s and
    keep its last progress report."""
    spec = {"body": body, "urls": list(urls), "params": params, "loop": _loop_name()}
    loop = asyncio.get_running_loop()
    start = loop.time()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "_child.py"),
        json.dumps(spec),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=1 << 24,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    stderr = proc.stderr
    err_tail: collections.deque[str] = collections.deque(maxlen=20)

    async def drain() -> None:
        async for line in stderr:
            err_tail.append(line.decode(errors="replace").rstrip())

    drainer = asyncio.ensure_future(drain())
    last: dict[str, Any] = {}
    result: dict[str, Any] | None = None
    killed = False
    try:
        while True:
            left = start + hard_limit - loop.time()
            if left <= 0:
                killed = True
                break
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), left)
            except asyncio.TimeoutError:
                killed = True
                break
            if not line:
                break
            kind, _, payload = line.decode(errors="replace").partition(" ")
            if kind in ("PROGRESS", "RESULT"):
                with contextlib.suppress(ValueError):
                    last = json.loads(payload)
                    if kind == "RESULT":
                        result = last
    finally:
        if proc.returncode is None:
            if killed or result is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(drainer, 5)
    run = ChildRun(seconds=loop.time() - start)
    data = result if result is not None else last
    run.rows = [(str(g), dict(v)) for g, v in data.get("rows", [])]
    run.stalls = dict(data.get("stalls", {}))
    current = data.get("current")
    if killed and current is not None:
        run.rows.append((str(current[0]), dict(current[1])))
        stall = run.stalls.get(str(current[0]), 0.0)
        run.partial = (
            f"KILLED at the hard limit ({hard_limit:.0f} s): figures as of its last "
            f"report, {data.get('t', 0):.0f} s in (longest event-loop stall seen: "
            f"{stall:.0f} s)"
        )
    elif killed:
        run.error = f"killed at the hard limit ({hard_limit:g} s), no report"
    elif result is None:
        tail = next((x for x in reversed(err_tail) if x.strip()), "")
        run.error = f"child failed (exit {proc.returncode}): {tail[:200]}"
    return run


#: How the counters by kind in a child's row are named in the remark.
_KINDS = {
    "_warnings": "warnings",
    "_votes": "votes of the failed",
    "_acquire": "acquire",
}


def _child_row(group: str, values: dict[str, Any], run: ChildRun) -> Row:
    parts: list[str] = []
    out: dict[str, float | None] = {}
    for key, value in values.items():
        if key.startswith("_"):
            if value:
                counts = collections.Counter({str(k): int(v) for k, v in value.items()})
                text = _counts(counts, 4)
                if key == "_warnings":
                    text = "; ".join(f"{n}x '{w}'" for w, n in counts.most_common(2))
                label = _KINDS.get(key)
                parts.append(f"{label}: {text}" if label else text)
        elif key == "per_trial":
            parts.insert(0, f"failed per trial: {value}")
        elif isinstance(value, (int, float)) or value is None:
            out[key] = None if value is None else float(value)
    out["max_stall_s"] = run.stalls.get(group)
    partial = run.partial is not None and (group, values) == run.rows[-1]
    if partial:
        parts.insert(0, run.partial or "")
    return Row(LIB, group, out, RedlockAio.describe(), None, "; ".join(parts))


async def _child_section(
    ctx: Ctx,
    section: Section,
    body: str,
    runs: Sequence[tuple[str, dict[str, Any], float]],
) -> None:
    """Each ``(group, params, hard_limit)``: the body in a child process, then
    the leftover check; its rows into ``section``."""
    cluster = ctx.clusters[3]
    for group, params, hard_limit in runs:
        if not _lib_selected(ctx):
            _not_selected(section, group)
            continue
        got: list[ChildRun] = []

        async def run(
            params: dict[str, Any] = params,
            limit: float = hard_limit,
            got: list[ChildRun] = got,
        ) -> None:
            got.append(await run_child(body, cluster.urls, params, limit))

        error = await _guarded(
            ctx, section.key, RedlockAio, cluster, run, hard_limit + 60
        )
        child = got[0] if got else ChildRun(error=error)
        for g, values in child.rows:
            section.rows.append(_child_row(g, values, child))
        if child.error is not None:
            section.rows.append(
                Row(LIB, group, note=RedlockAio.describe(), error=child.error)
            )
        ctx.log(f"  {section.key} {group} done in {child.seconds:.0f} s")


_CHILD_NOTE = (
    "Run in a child process (same interpreter and event loop kind) with a hard "
    "time limit; a run killed at it shows its figures as of its last report "
    "(once a second). longest stall: the longest time the child's event loop "
    "went without running its 50 ms heartbeat (the client busy in one turn)."
)

_BURST_NOTE = (
    "failed attempts: acquire attempts that got no quorum (each retried after "
    "the library's backoff), counted from the redlock_aio logger's documented "
    "DEBUG line; warnings: its WARNING records (kinds in the remark)."
)

_STALL = Column("max_stall_s", "longest stall, s", "{:,.2f}")


async def held_fresh(ctx: Ctx) -> Section:
    plan = ctx.plan
    seconds = plan.fresh_seconds
    section = Section(
        key="held_fresh",
        title=(
            "5b. A fresh acquire+release, one at a time, beside K locks held "
            "under auto-extension (TTL 10 s), N=3"
        ),
        group_header="K held",
        columns=[
            Column("held", "held", "{:,.0f}"),
            Column("cycles", "cycles", "{:,.0f}"),
            Column("p50_ms", "p50, ms", "{:,.2f}"),
            Column("p99_ms", "p99, ms", "{:,.2f}"),
            Column("max_ms", "worst, ms", "{:,.2f}"),
            Column("cpu_us", "CPU per cycle, us", "{:,.1f}"),
            Column("keeping_cpu_pct", "keeping K, CPU %", "{:,.1f}"),
            Column("lost", "lost"),
            Column("warnings", "warnings"),
            _STALL,
        ],
    )
    runs = []
    for k in plan.fresh_ks:
        params = {"k": k, "seconds": seconds, "limit": 60 + k / 1666}
        runs.append((str(k), params, 2 * seconds + 2 * (60 + k / 1666) + 60))
    await _child_section(ctx, section, "held_fresh", runs)
    base = next((r for r in section.rows if r.group == "0" and r.values), None)
    if base is not None:
        for row in section.rows:
            if row.values and row is not base:
                for key in ("max_ms", "cpu_us"):
                    ref, got = base.values.get(key), row.values.get(key)
                    if ref and got:
                        row.remark += f"{key}: {got / ref:.2f}x K=0; "
    section.notes += [
        (
            "One warm AsyncRedlock: K tasks in `async with redlock.lock(key)` "
            "(entered at once; default TTL 10 s, extended every third of it), "
            f"then {seconds:g} s with nothing else (the CPU that keeping K "
            f"costs), then {seconds:g} s of acquire+release of one other key, "
            "one after the other. CPU per cycle: the process CPU of that window "
            "less the keeping CPU of the same length, per cycle; worst: the "
            "slowest cycle (a full garbage collection over K held locks, a "
            "keeper batch, shows here). Remark: ratios to the K=0 row."
        ),
        f"{_CHILD_NOTE}",
    ]
    return section


def storm_limits(n: int) -> tuple[float, float, float]:
    """Seconds for every block to enter, for all to end once told to, and the
    hard limit of the child."""
    enter, end = 60 + n / 1666, 30 + n / 3333
    return enter, end, enter + end + 90


async def storm(ctx: Ctx) -> Section:
    plan = ctx.plan
    n = plan.storm_n
    enter, end, hard = storm_limits(n)
    section = Section(
        key="storm",
        title=(
            f"7. {n:,} lock() blocks entered at once on a cold client, then "
            "ended at once, N=3"
        ),
        group_header="blocks",
        columns=[
            Column("acquired", "acquired"),
            Column("lost", "lost (LockLost)"),
            Column("errors", "other errors"),
            Column("release_errors", "ReleaseError"),
            Column("keys_left", "keys left"),
            Column("enter_s", "all entered, s", "{:,.2f}"),
            Column("end_s", "all ended, s", "{:,.2f}"),
            Column("peak_rss_mb", "peak RSS MB"),
            Column("rss_growth_mb", "RSS growth MB"),
            Column("warnings", "warnings"),
            _STALL,
        ],
    )
    params = {"n": n, "enter_limit": enter, "end_limit": end}
    await _child_section(ctx, section, "storm", [(str(n), params, hard)])
    section.notes += [
        (
            f"A fresh AsyncRedlock (no connection open yet), {n:,} tasks started "
            "together, each `async with redlock.lock(key_i)` (default TTL 10 s, "
            "auto-extension) then awaiting one shared event, set once every "
            f"block has entered (or after {enter:.0f} s); then all end (limit "
            f"{end:.0f} s). all entered: from the first task's creation; all "
            "ended: from the event."
        ),
        (
            "lost: blocks that raised LockLost; ReleaseError: blocks whose release "
            "could not be confirmed; other errors by type in the remark; keys "
            "left: the most keys on a node once every block ended (after up to "
            "1 s for releases in flight), before aclose(); peak RSS: the child's "
            "high-water mark, reset when the scenario starts (RSS growth: from "
            "that start)."
        ),
        f"{_CHILD_NOTE} Hard limit here: {hard:.0f} s.",
    ]
    return section


def burst_limit(n: int) -> float:
    """Seconds allowed for a burst (or a phase) of ``n``, inside the child."""
    return 20 + n / 500


async def burst_cold(ctx: Ctx) -> Section:
    plan = ctx.plan
    section = Section(
        key="burst_cold",
        title=(
            "8a. Burst on a cold client: N blocking acquires at once (own keys), "
            "then N releases at once, N=3 nodes"
        ),
        group_header="acquires",
        columns=[
            Column("acquired", "acquired"),
            Column("acquire_errors", "acquire errors"),
            Column("failed_attempts", "failed attempts"),
            Column("acquire_s", "acquire all, s", "{:,.2f}"),
            Column("released", "released"),
            Column("release_errors", "ReleaseError"),
            Column("release_s", "release all, s", "{:,.2f}"),
            Column("warnings", "warnings"),
            _STALL,
        ],
    )
    runs = [
        (str(n), {"n": n, "limit": burst_limit(n)}, burst_limit(n) + 45)
        for n in plan.burst_cold_ns
    ]
    await _child_section(ctx, section, "cold", runs)
    section.notes += [
        (
            "A fresh AsyncRedlock per size (no connection open yet); N tasks at "
            "once, each `await redlock.acquire(key_i)` (blocking, default "
            "retries); once all are in, every lock's `release()` at once. acquire "
            "errors: acquires that raised, or were not over within 20 s + N/500 s "
            "(then cancelled)."
        ),
        _BURST_NOTE,
        _CHILD_NOTE + " Hard limit: 65 s + N/500 s.",
    ]
    return section


async def burst_warm(ctx: Ctx) -> Section:
    plan = ctx.plan
    section = Section(
        key="burst_warm",
        title=(
            "8b. Bursts on a warm client: N acquire+release at once, then a "
            "second burst right after, N=3 nodes"
        ),
        group_header="burst",
        columns=[
            Column("ok", "cycles ok"),
            Column("acquire_errors", "acquire errors"),
            Column("failed_attempts", "failed attempts"),
            Column("release_errors", "ReleaseError"),
            Column("burst_s", "burst, s", "{:,.2f}"),
            Column("rate", "cycles/s"),
            Column("warnings", "warnings"),
            _STALL,
        ],
    )
    runs = [
        (f"{n} #1", {"n": n, "limit": burst_limit(n)}, 2 * burst_limit(n) + 45)
        for n in plan.burst_warm_ns
    ]
    await _child_section(ctx, section, "warm", runs)
    section.notes += [
        (
            "One AsyncRedlock per size, warmed by one acquire+release "
            "(connections open); then N tasks at once, each a blocking "
            "`acquire(key_i)` then `release()`; then, as soon as all are over, "
            "the same again on new keys (#2). cycles ok: released without error; "
            "acquire errors: acquires that raised, or were not over within "
            "20 s + N/500 s (then cancelled)."
        ),
        _BURST_NOTE,
        _CHILD_NOTE + " Hard limit: 85 s + N/250 s.",
    ]
    return section


async def burst_extend(ctx: Ctx) -> Section:
    plan = ctx.plan
    k, size, ttl = plan.burst_held, plan.burst_held_size, plan.burst_held_ttl
    seconds = plan.burst_held_seconds
    section = Section(
        key="burst_extend",
        title=(
            f"8c. {k:,} locks held under auto-extension (TTL {ttl:g} s) while the "
            f"same client runs bursts of {size:,} acquire+release for "
            f"~{seconds:g} s, N=3"
        ),
        group_header="held + burst",
        columns=[
            Column("held", "held"),
            Column("lost", "lost"),
            Column("lost_in_window", "lost during bursts"),
            Column("held_release_errors", "held ReleaseError"),
            Column("bursts", "bursts"),
            Column("burst_ok", "burst cycles ok"),
            Column("burst_acquire_errors", "burst acquire errors"),
            Column("burst_release_errors", "burst ReleaseError"),
            Column("failed_attempts", "failed attempts"),
            Column("window_s", "window, s", "{:,.1f}"),
            Column("warnings", "warnings"),
            _STALL,
        ],
    )
    params = {
        "k": k,
        "size": size,
        "ttl": ttl,
        "seconds": seconds,
        "limit": burst_limit(size),
    }
    hard = seconds + 2 * burst_limit(size) + 90 + k / 50
    await _child_section(ctx, section, "extend", [(f"{k} + {size}", params, hard)])
    section.notes += [
        (
            f"One warm AsyncRedlock: {k:,} tasks in `async with redlock.lock(key, "
            f"ttl={ttl:g})` (extended every third of the TTL, per-node timeout "
            f"{_default_node_timeout(ttl) * 1e3:g} ms by default) wait until "
            f"told to end; meanwhile bursts of {size:,} tasks at once, each a "
            "blocking acquire+release on its own key (default TTL), one burst "
            f"after another for ~{seconds:g} s (the last burst may end later). "
            "lost: held blocks that raised LockLost (during bursts: before the "
            "end was signalled)."
        ),
        _BURST_NOTE,
        f"{_CHILD_NOTE} Hard limit here: {hard:.0f} s.",
    ]
    return section


async def burst_nonblocking(ctx: Ctx) -> Section:
    plan = ctx.plan
    n, trials = plan.nb_n, plan.nb_trials
    section = Section(
        key="burst_nonblocking",
        title=(
            f"8d. {n:,} non-blocking acquires at once on a cold client, three "
            f"idle nodes, {trials} trials"
        ),
        group_header="acquires x trials",
        columns=[
            Column("trials_failed", "trials with failures"),
            Column("failed", "failed acquires"),
            Column("max_failed", "most in a trial"),
            Column("acquire_s", "all over, s (median)", "{:,.2f}"),
            Column("release_errors", "ReleaseError"),
            Column("warnings", "warnings"),
            _STALL,
        ],
    )
    hard = trials * (30 + n / 250)
    params = {"n": n, "trials": trials}
    await _child_section(
        ctx, section, "nonblocking", [(f"{n} x{trials}", params, hard)]
    )
    section.notes += [
        (
            f"Each trial: a fresh AsyncRedlock, {n:,} tasks at once, each "
            "`acquire(key_i, blocking=False)` (one attempt) on its own free key; "
            "then the acquired ones released. Every failure here is one the nodes "
            "did not cause (they are idle and the keys free): the remark counts "
            "the votes (per node) of the failed acquires."
        ),
        f"{_CHILD_NOTE} Hard limit here: {hard:.0f} s.",
    ]
    return section


# -- 8e. a refusal beside a hung node ---------------------------------------------


async def _run_hung(cluster: LocalCluster, trials: int, hung: bool) -> dict[str, Any]:
    from redlock_aio import LockNotAcquired
    from redlock_aio.testing import HungNode

    key = f"{KEY_PREFIX}refused"
    latencies: list[float] = []
    votes = ""
    unexpected: collections.Counter[str] = collections.Counter()
    with HungNode() as node:
        third = node.url if hung else cluster.urls[2]
        for server in cluster.servers[:2]:  # another client holds the key there
            server.command("SET", key, "another-client", "PX", 600_000)
        rl = new_client([*cluster.urls[:2], third])
        try:
            for _ in range(trials):
                t0 = time.perf_counter()
                try:
                    lock = await rl.acquire(key, blocking=False)
                except LockNotAcquired as exc:
                    latencies.append(time.perf_counter() - t0)
                    votes = ", ".join(_vote(o) for o in exc.outcomes)
                except Exception as exc:  # noqa: BLE001 - counted by type
                    unexpected[type(exc).__name__] += 1
                else:
                    unexpected["acquired (!)"] += 1
                    await lock.release()
                await asyncio.sleep(0.05)
        finally:
            await rl.aclose()
            for server in cluster.servers[:2]:
                server.command("DEL", key)
    timeout = _default_node_timeout(TTL)
    p50 = statistics.median(latencies) if latencies else None
    parts = [f"votes (last trial): {votes}"] if votes else []
    if unexpected:
        parts.append(_counts(unexpected))
    return {
        "first_ms": round(latencies[0] * 1e3, 2) if latencies else None,
        "p50_ms": None if p50 is None else round(p50 * 1e3, 2),
        "max_ms": round(max(latencies) * 1e3, 2) if latencies else None,
        "node_timeout_ms": timeout * 1e3,
        "p50_vs_timeout": None if p50 is None else round(p50 / timeout, 3),
        "trials": float(len(latencies)),
        "remark": "; ".join(parts),
    }


async def hung_refusal(ctx: Ctx) -> Section:
    plan = ctx.plan
    cluster = ctx.clusters[3]
    section = Section(
        key="hung_refusal",
        title=(
            "8e. A non-blocking acquire refused by two nodes while the third is "
            "hung: latency vs the per-node timeout, N=3"
        ),
        group_header="third node",
        columns=[
            Column("first_ms", "first (cold) ms", "{:,.2f}"),
            Column("p50_ms", "p50 ms", "{:,.2f}"),
            Column("max_ms", "max ms", "{:,.2f}"),
            Column("node_timeout_ms", "node timeout ms"),
            Column("p50_vs_timeout", "p50 / node timeout", "{:,.2f}"),
            Column("trials", "trials"),
        ],
    )
    for label, hung in (("hung", True), ("idle (control)", False)):
        if not _lib_selected(ctx):
            _not_selected(section, label)
            continue
        values: dict[str, Any] = {}

        async def body(hung: bool = hung, values: dict[str, Any] = values) -> None:
            values.update(await _run_hung(cluster, plan.hung_trials, hung))

        limit = plan.hung_trials * 3 + 30
        error = await _guarded(ctx, "hung_refusal", RedlockAio, cluster, body, limit)
        remark = values.pop("remark", "")
        section.rows.append(
            Row(LIB, label, values, RedlockAio.describe(), error, remark)
        )
    section.notes.append(
        "Nodes 1 and 2 hold the key for another client (a plain SET); node 3 is "
        "a redlock_aio.testing.HungNode (accepts, never answers), or a healthy "
        f"idle node as the control. {plan.hung_trials} non-blocking acquires, "
        "one after another (50 ms apart) on one client, the first on cold "
        "connections. Two refusals put the quorum (2 of 3) out of reach: the "
        "fix target is an answer at once, not after the per-node timeout "
        f"(default {_default_node_timeout(TTL) * 1e3:g} ms for the 10 s TTL)."
    )
    return section


#: The new scenarios, by ``--only`` name.
OVERLOAD: dict[str, Callable[[Ctx], Awaitable[Section]]] = {
    "held_fresh": held_fresh,
    "throughput_256": throughput_256,
    "fake_cpu": fake_cpu,
    "storm": storm,
    "burst_cold": burst_cold,
    "burst_warm": burst_warm,
    "burst_extend": burst_extend,
    "burst_nonblocking": burst_nonblocking,
    "hung_refusal": hung_refusal,
}

#: Every scenario in the order of a full run: 2b beside 2; the CPU figures
#: before the overloads, so that their garbage cannot weigh on it.
SCENARIOS: dict[str, Callable[[Ctx], Awaitable[Section]]] = {}
for _name, _fn in BASE_SCENARIOS.items():
    SCENARIOS[_name] = _fn
    if _name == "throughput":
        SCENARIOS["throughput_256"] = throughput_256
SCENARIOS.update({k: v for k, v in OVERLOAD.items() if k not in SCENARIOS})

#: ``--only`` names that stand for several scenarios.
GROUPS: dict[str, list[str]] = {
    "bursts": [
        "burst_cold",
        "burst_warm",
        "burst_extend",
        "burst_nonblocking",
        "hung_refusal",
    ],
    "overload": list(OVERLOAD),
}
