"""What the scenarios share: the plan (sizes per mode), statistics, and the check
that no lock key is left on any node after an implementation ran."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Sequence

    from redlock_aio.testing import LocalCluster

#: Every lock key starts with this (pottery adds it itself).
KEY_PREFIX = "redlock:bench:"

#: Lock TTL of every scenario, seconds.
TTL = 10.0


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one run (``quick`` or full)."""

    quick: bool
    lat_ns: tuple[int, ...] = (1, 3, 5, 7)
    lat_rounds: int = 20
    lat_warmup: int = 25
    lat_iters: int = 30
    tp_tasks: int = 64
    tp_rounds: int = 7
    tp_seconds: float = 0.5
    ho_workers: int = 16
    ho_rounds: int = 4
    ho_handoffs: int = 50
    ho_cpu_window: float = 2.0
    ho_hold: float = 0.001
    slow_latency: float = 0.05
    slow_rounds: int = 3
    slow_iters: int = 30
    hold_ks: tuple[int, ...] = (10_000,)
    hold_seconds: float = 60.0
    # Overload scenarios (_overload.py). 2b: scenario 2 with 256 tasks, in
    # full-mode windows in every mode.
    tp_big_tasks: int = 256
    tp_big_seconds: float = 0.5
    # 6: CPU per cycle on the fake transport; a median of 5 rounds, as the
    # CPU time of one round moves by up to a quarter on a shared machine.
    cpu_cycles: int = 20_000
    cpu_rounds: int = 5
    cpu_tasks: int = 64
    cpu_gc_cycles: int = 10_000
    # 5b: a fresh acquire beside K held locks (K=0 first, the reference).
    fresh_ks: tuple[int, ...] = (0, 100_000)
    fresh_seconds: float = 10.0
    # 7: lock() blocks entered at once on a cold client.
    storm_n: int = 100_000
    # 8a-8e: bursts.
    burst_cold_ns: tuple[int, ...] = (10_000, 20_000, 30_000)
    burst_warm_ns: tuple[int, ...] = (20_000, 30_000)
    burst_held: int = 1_000
    burst_held_ttl: float = 3.0
    burst_held_size: int = 20_000
    burst_held_seconds: float = 10.0
    nb_n: int = 5_000
    nb_trials: int = 5
    hung_trials: int = 20

    @classmethod
    def make(cls, *, quick: bool, full_scale: bool) -> Plan:
        plan = cls(quick=quick)
        if quick:
            plan = dataclasses.replace(
                plan,
                lat_rounds=4,
                lat_warmup=10,
                lat_iters=20,
                tp_rounds=3,
                tp_seconds=0.25,
                ho_rounds=1,
                ho_handoffs=8,
                ho_cpu_window=0.5,
                slow_rounds=2,
                slow_iters=3,
                hold_ks=(1_000,),
                hold_seconds=10.0,
                cpu_cycles=5_000,
                cpu_rounds=1,
                fresh_ks=(0, 10_000),
                fresh_seconds=3.0,
                storm_n=10_000,
                burst_cold_ns=(1_000, 2_000, 3_000),
                burst_warm_ns=(2_000, 3_000),
                burst_held=100,
                burst_held_size=2_000,
                burst_held_seconds=5.0,
                nb_n=500,
                hung_trials=5,
            )
        if full_scale:
            plan = dataclasses.replace(plan, hold_ks=(*plan.hold_ks, 100_000))
        return plan


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def ratio(value: float | None, floor: float | None) -> float | None:
    """``value / floor``, or None when either is missing or the floor is 0."""
    if value is None or floor is None or not floor or math.isnan(value):
        return None
    if math.isnan(floor):
        return None
    return round(value / floor, 3)


@dataclass
class Row:
    """One implementation's figures in one table (``group`` is e.g. the N)."""

    impl: str
    group: str = ""
    values: dict[str, float | None] = field(default_factory=dict)
    note: str = ""
    error: str | None = None
    remark: str = ""

    def as_json(self, floor: Row | None) -> dict[str, Any]:
        ratios = {
            k: ratio(v, floor.values.get(k) if floor is not None else None)
            for k, v in self.values.items()
        }
        return {
            "impl": self.impl,
            "group": self.group,
            "values": self.values,
            "ratio_to_mux_floor": ratios,
            "note": self.note,
            "error": self.error,
            "remark": self.remark,
        }


@dataclass
class Leftover:
    """Keys found on the nodes after an implementation ran (then flushed)."""

    scenario: str
    impl: str
    keys_per_node: list[int]
    settled_after_s: float


class LeftoverCheck:
    """``DBSIZE`` on every node after each run, then ``FLUSHALL``.

    Keys may still be going away when a library returned before every node
    answered (requests left in flight); the check polls for up to ``settle``
    seconds and reports what is still there, so only keys that stay are leaks.
    """

    def __init__(self, settle: float = 1.0) -> None:
        self.settle = settle
        self.found: list[Leftover] = []

    def check(self, cluster: LocalCluster, scenario: str, impl: str) -> list[int]:
        start = time.monotonic()
        sizes = cluster.dbsize()
        while any(sizes) and time.monotonic() - start < self.settle:
            time.sleep(0.05)
            sizes = cluster.dbsize()
        if any(sizes):
            self.found.append(
                Leftover(scenario, impl, sizes, round(time.monotonic() - start, 2))
            )
            cluster.flushall()
        return sizes

    def total(self, scenario: str, impl: str) -> int:
        return sum(
            max(x.keys_per_node)
            for x in self.found
            if x.scenario == scenario and x.impl == impl
        )


def us(seconds: float) -> float:
    """Seconds to microseconds, rounded to 0.1."""
    return round(seconds * 1e6, 1)


class Impl:
    """One implementation as the scenarios drive it (an adapter per library).

    Handles are opaque: whatever ``acquire`` returned goes back to ``release``.
    Keys are full Redis keys (``KEY_PREFIX`` + name).
    """

    #: Row label.
    name: ClassVar[str] = "?"
    #: How it is run (async, threads, single node...), shown in the tables.
    note: ClassVar[str] = ""
    #: Uses only the first node (a single-node lock).
    single_node: ClassVar[bool] = False
    #: Has a way to keep a lock alive in the background (scenario 5).
    can_hold: ClassVar[bool] = False
    #: Why not, when it has none.
    no_hold: ClassVar[str] = "no auto-extension (manual extend only)"

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this implementation cannot run here, or None."""
        return None

    @classmethod
    def describe(cls) -> str:
        """How it runs, for the implementations table."""
        return cls.note

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = list(urls[:1] if self.single_node else urls)

    async def acquire(self, key: str, ttl: float) -> object | None:
        """One attempt; the handle, or None if not acquired."""
        raise NotImplementedError

    async def acquire_wait(self, key: str, ttl: float) -> object:
        """Wait until acquired, with the library's own default retry policy."""
        raise NotImplementedError

    async def release(self, handle: object) -> None:
        raise NotImplementedError

    async def hold(
        self, key: str, ttl: float, stop: asyncio.Event, ready: Callable[[], None]
    ) -> bool:
        """Acquire, call ``ready()``, keep the lock alive until ``stop``, release.

        :return: True if the lock was lost on the way.
        """
        raise NotImplementedError(f"{self.name} has no auto-extension")

    async def aclose(self) -> None:
        """Close every connection."""


@dataclass(frozen=True)
class Column:
    """A value column: ``key`` in :attr:`Row.values`, its header and format."""

    key: str
    header: str
    fmt: str = "{:,.0f}"
    #: Show this value's ratio to the mux floor in its own column.
    ratio: bool = False


@dataclass
class Section:
    """One scenario's table: rows, columns, notes, derived figures."""

    key: str
    title: str
    group_header: str
    columns: list[Column]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    derived: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def floor_for(self, group: str) -> Row | None:
        """The group's mux floor on asyncio, else on the first other loop."""
        floors = [
            row
            for row in self.rows
            if row.group == group
            and row.error is None
            and (row.impl == FLOOR_NAME or row.impl.startswith(FLOOR_NAME + " ("))
        ]
        exact = [row for row in floors if row.impl == FLOOR_NAME]
        found = exact or floors
        return found[0] if found else None


#: The row every ratio is relative to.
FLOOR_NAME = "floor (mux)"
