"""Command line: start the local nodes, run the scenarios, write the reports, stop
the nodes (also on error, Ctrl-C or SIGTERM)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.metadata
import logging
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ._common import LeftoverCheck, Plan
from ._overload import GROUPS, SCENARIOS
from ._peers import ALL, REDLOCK_NG, versions
from ._report import impl_table, leftover_table, machine_block, plots, table, write_json
from ._scenarios import Ctx

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from types import FrameType

    from redlock_aio.testing import LocalCluster

    from ._common import Impl, Section

HERE = Path(__file__).resolve().parent

#: Event loops that ``--loop`` accepts.
LOOPS = ("asyncio", "uvloop")


def loop_list(text: str) -> list[str]:
    """The type of ``--loop``: comma-separated names from :data:`LOOPS`."""
    loops = list(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    bad = [x for x in loops if x not in LOOPS]
    if bad or not loops:
        raise argparse.ArgumentTypeError(
            f"not an event loop: {', '.join(bad) or repr(text)} "
            f"(choose from {', '.join(LOOPS)})"
        )
    if "uvloop" in loops:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise argparse.ArgumentTypeError("uvloop is not installed") from None
    return loops


def suffix(loop: str) -> str:
    """What a row's name gains on *loop*: nothing on asyncio."""
    return "" if loop == "asyncio" else f" ({loop})"


def on_every_loop(cls: type[Impl]) -> bool:
    """redlock_aio and the floors run on every ``--loop``; the peers on asyncio."""
    return cls.name.startswith(("redlock_aio", "floor"))


def row_order(loops: list[str]) -> list[str]:
    """Row names in table order: each implementation, then its other loops."""
    return [
        cls.name + suffix(loop)
        for cls in ALL
        for loop in loops
        if loop == "asyncio" or on_every_loop(cls)
    ]


def run_on(loop: str, main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)`` on *loop*."""
    if loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Benchmark redlock_aio against minimal floors and other "
        "Python Redlock libraries on local redis-server nodes.",
    )
    p.add_argument(
        "--quick", action="store_true", help="fewer iterations (about a minute)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=HERE / "results",
        help="output directory (default: benchmarks/results)",
    )
    p.add_argument(
        "--full-scale",
        action="store_true",
        help="also hold K=100,000 locks in scenario 5",
    )
    p.add_argument(
        "--only",
        action="append",
        choices=[*SCENARIOS, *GROUPS],
        help="run only this scenario (repeatable); "
        + "; ".join(f"{g}: {', '.join(names)}" for g, names in GROUPS.items()),
    )
    p.add_argument(
        "--impl",
        action="append",
        metavar="TEXT",
        help="run only implementations whose name contains TEXT (repeatable; "
        "the mux floor always runs)",
    )
    p.add_argument(
        "--loop",
        type=loop_list,
        default=["asyncio"],
        metavar="asyncio,uvloop",
        help="event loop(s), comma-separated (default asyncio): on each loop but "
        "asyncio, redlock_aio and the floors run again, their rows named after "
        "the loop, e.g. 'redlock_aio (uvloop)'; the peers run on asyncio only",
    )
    p.add_argument(
        "--no-install",
        action="store_true",
        help=f"do not pip-install {REDLOCK_NG} (--no-deps) when it is missing",
    )
    return p.parse_args(argv)


def only(chosen: list[str] | None) -> list[str]:
    """The scenarios to run, in full-run order (group names expanded)."""
    if not chosen:
        return list(SCENARIOS)
    wanted = {n for name in chosen for n in GROUPS.get(name, [name])}
    return [name for name in SCENARIOS if name in wanted]


def ensure_redlock_ng(log: Any) -> None:
    """Install redlock-ng with --no-deps into this environment if missing: it pins
    redis<6, which would downgrade redis-py, while its async API runs on the
    installed one."""
    try:
        importlib.metadata.version("redlock-ng")
    except importlib.metadata.PackageNotFoundError:
        pass
    else:
        return
    log(f"installing {REDLOCK_NG} with --no-deps into {sys.prefix} (it pins redis<6)")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", REDLOCK_NG]
    if subprocess.run(cmd, check=False).returncode != 0:
        log("  install failed: redlock-ng will be reported as not installed")
    importlib.invalidate_caches()


def select(args: argparse.Namespace) -> tuple[list[type[Impl]], dict[str, str]]:
    chosen = [
        cls
        for cls in ALL
        if not args.impl
        or cls is ALL[0]
        or any(text.lower() in cls.name.lower() for text in args.impl)
    ]
    runnable, unavailable = [], {}
    for cls in chosen:
        reason = cls.unavailable()
        if reason is None:
            runnable.append(cls)
        else:
            unavailable[cls.name] = reason
    return runnable, unavailable


def machine_info(binary: str, source: str, loops: list[str]) -> dict[str, Any]:
    server = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "-C", str(HERE.parent), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "event_loop": "; ".join(
            "asyncio (default selector loop)"
            if loop == "asyncio"
            else f"{loop} (rows named '... ({loop})')"
            for loop in loops
        ),
        "redis_server": server,
        "redis_server_from": source,
        "redlock_aio_commit": commit or None,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "versions": versions(),
    }


def _quiet() -> None:
    logging.getLogger("redlock_aio").setLevel(logging.ERROR)
    logging.getLogger("pottery").setLevel(logging.ERROR)
    logging.getLogger("aioredlock").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _sigterm(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


async def run_scenarios(
    ctx: Ctx, names: list[str], order: list[str], sections: list[Section], loop: str
) -> None:
    """Run the scenarios in turn on the running *loop*, appending each finished
    section (its rows named after the loop), or its rows to the section of the
    same scenario that a previous loop finished."""
    done = {s.key: s for s in sections}
    for name in names:
        ctx.log(f"== {name}" + (f" on {loop}" if loop != "asyncio" else ""))
        start = time.perf_counter()
        found = len(ctx.leftovers.found)
        try:
            section = await SCENARIOS[name](ctx)
        except Exception:  # noqa: BLE001 - a harness bug: report it, go on
            traceback.print_exc()
            continue
        section.seconds = time.perf_counter() - start
        if loop != "asyncio":
            for row in section.rows:
                row.impl += suffix(loop)
            for leftover in ctx.leftovers.found[found:]:
                leftover.impl += suffix(loop)
        print()
        print(table(section, order))
        if (first := done.get(section.key)) is None:
            sections.append(section)
            done[section.key] = section
        else:
            first.rows += section.rows
            first.seconds += section.seconds
            first.notes += [
                f"On {loop}: {n}" for n in section.notes if n not in first.notes
            ]
            if section.derived:
                first.derived[f"on {loop}"] = section.derived


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _quiet()
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {text}", flush=True)

    from redlock_aio.testing import LocalCluster, find_redis_server

    if not args.no_install:
        ensure_redlock_ng(log)
    plan = Plan.make(quick=args.quick, full_scale=args.full_scale)
    impls, unavailable = select(args)
    for name, reason in unavailable.items():
        log(f"skipping {name}: {reason}")
    names = only(args.only)
    sizes = set(plan.lat_ns) if "latency" in names else set()
    if set(names) - {"latency"}:
        sizes.add(3)
    binary, source = find_redis_server()
    machine = machine_info(binary, source, args.loop)
    log(f"{machine['redis_server'] or binary} ({source})")
    order = row_order(args.loop)
    leftovers = LeftoverCheck()
    with contextlib.ExitStack() as stack:
        clusters: dict[int, LocalCluster] = {}
        for n in sorted(sizes):
            clusters[n] = stack.enter_context(LocalCluster(n))
        log(f"started nodes: {', '.join(f'N={n}' for n in clusters)}")
        sections: list[Section] = []
        interrupted = False
        try:
            for i, loop in enumerate(args.loop):
                ctx = Ctx(
                    plan,
                    impls if loop == "asyncio" else list(filter(on_every_loop, impls)),
                    unavailable if i == 0 else {},
                    clusters,
                    leftovers,
                    log,
                )
                run_on(loop, run_scenarios(ctx, names, order, sections, loop))
        except KeyboardInterrupt:
            log("interrupted: stopping the nodes")
            interrupted = True
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["mode"] = "quick" if args.quick else "full"
    machine["total_seconds"] = round(time.perf_counter() - started, 1)
    if interrupted:
        machine["interrupted"] = "yes: only the scenarios that finished"
    if len(args.loop) > 1:
        for section in sections:
            print()
            print(table(section, order))
    if sections:
        write_outputs(
            args.out, machine, plan, impls, unavailable, sections, leftovers, order
        )
    log(f"done in {machine['total_seconds']:.0f} s; results in {args.out}")
    return 130 if interrupted else 0


def write_outputs(
    out: Path,
    machine: dict[str, Any],
    plan: Plan,
    impls: list[type[Impl]],
    unavailable: dict[str, str],
    sections: list[Section],
    leftovers: LeftoverCheck,
    order: list[str],
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    vers = machine["versions"]
    dist = {
        "redlock_aio": "redlock-aio",
        "redlock_aio (mux)": "redlock-aio",
        "redlock_aio (redis-py)": "redlock-aio",
        "aioredlock": "aioredlock",
        "redlock-ng": "redlock-ng",
        "pottery AIORedlock": "pottery",
        "pottery Redlock (sync)": "pottery",
        "redis-py Lock (1 node)": "redis",
        "floor (redis-py gather)": "redis",
        "floor (mux)": "hiredis",
    }
    impl_info = [
        {
            "name": cls.name,
            "note": cls.describe(),
            "version": vers.get(dist.get(cls.name, ""), None),
            "unavailable": unavailable.get(cls.name),
        }
        for cls in ALL
        if cls in impls or cls.name in unavailable
    ]
    md = [
        "# redlock_aio benchmarks",
        "",
        (
            f"Mode: {machine['mode']}. Indicative numbers: one run on one machine, "
            "client and nodes sharing its cores (see the load averages). Ratios "
            "are to the benchmark's own minimal pipelined floor, `floor (mux)`."
        ),
        "",
        machine_block(machine),
        impl_table(impl_info),
        *(table(s, order) for s in sections),
        leftover_table(leftovers.found),
    ]
    (out / "results.md").write_text("\n".join(md))
    write_json(
        out / "results.json",
        machine,
        dataclasses.asdict(plan),
        impl_info,
        sections,
        leftovers.found,
    )
    print(leftover_table(leftovers.found))
    try:
        written = plots(out, sections, order)
    except ImportError as exc:
        print(f"no plots: {exc} (pip install matplotlib)")
    else:
        print("plots: " + ", ".join(p.name for p in written))
