"""Soak: clients in several OS processes contend for one resource on 5 nodes,
incrementing a counter in a protected store inside the lock, while several
faults at once hit the nodes (killed and restarted empty, restarted, stopped,
``DEBUG SLEEP``, ``CLIENT KILL``, ``SCRIPT FLUSH``, a tiny ``maxmemory``) and
the links of one client process (a minority partition, latency, dropped
replies, resets); and, now and then, one process is cut off from a majority of
nodes while it holds the lock, which must then be lost (``LockLost``). One
process reaches the nodes through direct proxies, the other through pooling
ones, which hide a node's restart from the client's connection.

Pass: no two validity windows overlap (:class:`MutexChecker`), no write landed
in the store inside another holder's window (:class:`StoreChecker`), no
increment was lost, every majority partition cost its holder the lock, no lock
key, process or fault is left behind, and the workers logged no error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from redlock_aio.testing import (
    FaultProxy,
    LocalCluster,
    MutexChecker,
    ProtectedStore,
    RedisReplyError,
    RedisServer,
    StoreChecker,
    Write,
)

from .helpers import lock_keys

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

pytestmark = [pytest.mark.integration, pytest.mark.soak]

WORKERS = 2
CLIENTS_PER_WORKER = 4
#: Generous for a loaded 2-core machine: workers write only with TTL/2 left.
TTL = 2.0
NODE_TIMEOUT = 0.3
#: Random faults under way at once (besides the majority partitions).
LANES = 3
#: Nodes under a fault at once: a minority of 5, so that locks stay possible.
NODES_AT_ONCE = 2
#: Seconds between majority partitions.
MAJORITY_GAP = (8.0, 15.0)
#: A majority partition outlasts any validity: the holder cannot extend.
MAJORITY_SECONDS = 1.5 * TTL
#: "Must happen" bound for a worker to take the long hold it was asked for.
LONG_HOLD_WAIT = 30.0
#: Below a fresh node's own memory use: every write is refused (OOM).
TINY_MAXMEMORY = "100kb"

NODE_FAULTS = (
    "kill",
    "restart",
    "pause",
    "debug_sleep",
    "client_kill",
    "script_flush",
    "maxmemory",
)
PATH_FAULTS = ("partition", "latency", "drop_replies", "reset")


class FaultSchedule:
    """Injects faults into the nodes and the workers' proxies: :data:`LANES`
    random faults at once, each bounded in time and healed by its lane, and the
    majority partitions. A node has one fault at a time, so does a proxy."""

    def __init__(
        self,
        cluster: LocalCluster,
        proxies: list[list[FaultProxy]],
        store: ProtectedStore,
        workers: list[asyncio.subprocess.Process],
        rng: random.Random,
    ) -> None:
        self.cluster = cluster
        self.proxies = proxies
        self.store = store
        self.workers = workers
        self.rng = rng
        self.counts: Counter[str] = Counter()
        #: The token of each lock held through a majority partition.
        self.cut_off: list[str] = []
        self._node_locks = [asyncio.Lock() for _ in cluster]
        self._node_budget = asyncio.Semaphore(NODES_AT_ONCE)
        self._proxy_locks = [[asyncio.Lock() for _ in row] for row in proxies]
        self._deck: list[str] = []

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def run(self, seconds: float) -> None:
        """One majority partition first (the cluster calm: it cannot miss),
        then all lanes until *seconds* have passed since the start."""
        end = self._now() + seconds
        if not await self.majority_partition():
            raise AssertionError("no worker took a long hold in a calm cluster")
        await asyncio.gather(
            self.majority_lane(end), *(self.lane(end) for _ in range(LANES))
        )

    def _draw(self) -> str:
        """The next fault kind: each kind once per shuffled round."""
        if not self._deck:
            self._deck = [*NODE_FAULTS, *PATH_FAULTS]
            self.rng.shuffle(self._deck)
        return self._deck.pop()

    async def lane(self, end: float) -> None:
        while self._now() < end:
            kind = self._draw()
            if kind in NODE_FAULTS:
                await self.node_fault(kind, self.rng.randrange(len(self.cluster)))
            else:
                await self.path_fault(kind, self.rng.randrange(WORKERS))
            self.counts[kind] += 1
            await asyncio.sleep(self.rng.uniform(0.1, 0.5))

    async def node_fault(self, kind: str, node: int) -> None:
        server = self.cluster[node]
        rng = self.rng

        async def command(*args: str) -> None:
            await asyncio.to_thread(server.command, *args, timeout=TTL + 30)

        async with self._node_budget, self._node_locks[node]:
            if kind == "kill":  # back empty after a while: its marker is gone
                server.kill()
                await asyncio.sleep(rng.uniform(0.1, 1.0))
                await asyncio.to_thread(server.restart)
            elif kind == "restart":  # back empty at once
                await asyncio.to_thread(server.restart)
            elif kind == "pause":  # sometimes longer than the TTL
                server.pause()
                try:
                    await asyncio.sleep(rng.uniform(0.1, 2 * TTL))
                finally:
                    server.resume()
            elif kind == "debug_sleep":  # the server blocks itself
                await command("DEBUG", "SLEEP", f"{rng.uniform(0.1, TTL):.3f}")
            elif kind == "client_kill":
                await command("CLIENT", "KILL", "TYPE", "normal")
            elif kind == "script_flush":
                await command("SCRIPT", "FLUSH")
            else:  # maxmemory: acquires there fail with OOM for a while
                await command("CONFIG", "SET", "maxmemory", TINY_MAXMEMORY)
                try:
                    await asyncio.sleep(rng.uniform(0.5, 2.0))
                finally:
                    await command("CONFIG", "SET", "maxmemory", "0")

    @contextlib.asynccontextmanager
    async def cut(self, worker: int, nodes: Sequence[int]) -> AsyncIterator[None]:
        """Own the proxies of *worker* to *nodes* (in order: no deadlock), and
        heal them when done."""
        async with contextlib.AsyncExitStack() as stack:
            for node in sorted(nodes):
                await stack.enter_async_context(self._proxy_locks[worker][node])
            try:
                yield
            finally:
                for node in nodes:
                    self.proxies[worker][node].heal()

    async def path_fault(self, kind: str, worker: int) -> None:
        rng, n = self.rng, len(self.cluster)
        if kind == "partition":  # a minority
            nodes = rng.sample(range(n), rng.randint(1, (n - 1) // 2))
        else:
            nodes = [rng.randrange(n)]
        async with self.cut(worker, nodes):
            for node in nodes:
                proxy = self.proxies[worker][node]
                if kind == "partition":
                    proxy.blackhole()
                elif kind == "latency":
                    proxy.add_latency(rng.uniform(0.01, 0.15))
                elif kind == "drop_replies":
                    proxy.drop_replies_after(rng.uniform(0, 0.2))
                else:
                    proxy.reset()
            await asyncio.sleep(rng.uniform(0.05, 0.3 if kind == "reset" else 2.0))

    async def majority_lane(self, end: float) -> None:
        while (gap := self.rng.uniform(*MAJORITY_GAP)) < end - self._now():
            await asyncio.sleep(gap)
            if not await self.majority_partition():
                self.counts["majority_missed"] += 1

    async def majority_partition(self) -> bool:
        """Ask a worker for a long hold; once it holds (its first heartbeat in
        the store), cut it off from a majority of nodes for longer than any
        validity. False if it never took the hold (the cluster too faulty)."""
        worker = self.rng.randrange(WORKERS)
        n = len(self.cluster)
        nodes = self.rng.sample(range(n), n // 2 + 1)
        async with self.cut(worker, nodes):
            since = len(self.store.writes())
            stdin = self.workers[worker].stdin
            assert stdin is not None
            stdin.write(b"long\n")
            await stdin.drain()
            beat = await self.first_heartbeat(f"w{worker}.", since)
            if beat is None:
                return False
            for node in nodes:
                self.proxies[worker][node].blackhole()
            await asyncio.sleep(MAJORITY_SECONDS)
        self.counts["majority_partition"] += 1
        self.cut_off.append(beat.token)
        return True

    async def first_heartbeat(self, writers: str, since: int) -> Write | None:
        deadline = self._now() + LONG_HOLD_WAIT
        while self._now() < deadline:
            for write in self.store.writes(since):
                if write.key == "long" and write.writer.startswith(writers):
                    return write
            await asyncio.sleep(0.02)
        return None


def merge(reports: list[dict[str, Any]], part: str) -> Counter[str]:
    total: Counter[str] = Counter()
    for report in reports:
        total.update(report[part])
    return total


def log_digest(log: Counter[str]) -> str:
    """The workers' log records, by kind, most frequent first, each shortened."""
    kinds = "; ".join(f"{n} x {kind[:70]}" for kind, n in log.most_common(6))
    more = f"; {len(log) - 6} more kinds" if len(log) > 6 else ""
    return f"{sum(log.values())} records: {kinds or 'none'}{more}"


class Outcome:
    """What a run produced (the workers' reports, their holdings, the store's
    writes, the faults), checked, and its summary."""

    def __init__(
        self,
        reports: list[dict[str, Any]],
        checker: MutexChecker,
        store: ProtectedStore,
        schedule: FaultSchedule,
    ) -> None:
        self.counts = merge(reports, "counts")
        self.log = merge(reports, "log")
        self.errors = sum(r["errors"] for r in reports)
        self.violations = checker.violations()
        self.writes = store.writes()
        self.store_check = StoreChecker(self.writes, checker.holdings)
        self.store_violations = self.store_check.violations()
        self.counter = int(store.value("counter") or 0)
        self.increments = sum(w.key == "counter" and w.accepted for w in self.writes)
        self.faults = dict(sorted(schedule.counts.items()))
        self.cut_off = schedule.cut_off
        lost = {h.token for h in checker.holdings if h.lost}
        #: Locks that a majority partition did not cost their holder.
        self.kept = [token for token in self.cut_off if token not in lost]

    def summary(self, seconds: float, seed: int) -> str:
        c = self.counts
        return (
            f"soak {seconds:g} s, seed {seed}: {c['acquired']} acquisitions, "
            f"{c['not_acquired']} timed out, {c['lost']} lost locks "
            f"({len(self.cut_off)} majority partitions of a holder, "
            f"{len(self.kept)} kept), {c['long_holds']} long holds; "
            f"store: {len(self.writes)} writes, {len(self.store_check.late())} "
            f"late, {len(self.store_check.refused())} refused, "
            f"{c['writes_skipped']} skipped (validity low), counter "
            f"{self.counter} for {self.increments} increments; violations: "
            f"{len(self.violations)} mutex, {len(self.store_violations)} store\n"
            f"  faults ({sum(self.faults.values())}, up to {LANES} at once "
            f"besides the majority partitions): {self.faults}\n"
            f"  worker log: {log_digest(self.log)}; {self.errors} errors"
        )


async def heal_everything(
    cluster: LocalCluster, proxies: list[list[FaultProxy]]
) -> None:
    """Every proxy passes, every node runs, answers and has no memory limit."""
    for row in proxies:
        for proxy in row:
            proxy.heal()
    await asyncio.to_thread(cluster.heal)
    for server in cluster:
        await asyncio.to_thread(server.command, "CONFIG", "SET", "maxmemory", "0")


async def spawn_worker(
    name: str, proxies: list[FaultProxy], store: ProtectedStore, out: Path
) -> asyncio.subprocess.Process:
    config = {
        "name": name,
        "urls": [p.url for p in proxies],
        "store_port": store.port,
        "ttl": TTL,
        "node_timeout": NODE_TIMEOUT,
        "clients": CLIENTS_PER_WORKER,
        "out": str(out),
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("soak_worker.py")),
        json.dumps(config),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )


async def stop_workers(
    workers: list[asyncio.subprocess.Process],
) -> list[dict[str, Any]]:
    """End of file on their stdin: the workers stop; their reports."""
    for proc in workers:
        assert proc.stdin is not None
        proc.stdin.close()
    outputs = [await asyncio.wait_for(p.communicate(), 60) for p in workers]
    assert [p.returncode for p in workers] == [0] * len(workers)
    return [json.loads(out.decode().splitlines()[-1]) for out, _ in outputs]


async def test_soak_under_faults(
    cluster5: LocalCluster,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="redlock_aio.testing")
    seconds = float(request.config.getoption("--soak-seconds"))
    seed = int(request.config.getoption("--soak-seed"))
    proxies: list[list[FaultProxy]] = []
    workers: list[asyncio.subprocess.Process] = []
    outs = [tmp_path / f"worker{w}.jsonl" for w in range(WORKERS)]
    store = ProtectedStore().start()
    try:
        for w in range(WORKERS):
            # Worker 1 goes through pooling proxies: a restart is hidden from
            # its connections, only the nodes' markers tell.
            row = [
                FaultProxy("127.0.0.1", s.port, reconnect_upstream=w == 1)
                for s in cluster5
            ]
            for proxy in row:
                await proxy.start()
            proxies.append(row)
            workers.append(await spawn_worker(f"w{w}", row, store, outs[w]))
        schedule = FaultSchedule(cluster5, proxies, store, workers, random.Random(seed))
        try:
            await schedule.run(seconds)
        finally:
            await heal_everything(cluster5, proxies)
        await asyncio.sleep(TTL)  # healed, quarantines over: locks again
        reports = await stop_workers(workers)
        outcome = Outcome(reports, MutexChecker.load(*map(str, outs)), store, schedule)
        report = outcome.summary(seconds, seed)
        # Shown in the run's summary by conftest.pytest_terminal_summary.
        request.node.user_properties.append(("summary", report))
        assert not outcome.violations, "\n".join(map(str, outcome.violations[:10]))
        assert not outcome.store_violations, "\n".join(
            map(str, outcome.store_violations[:10])
        )
        # No increment lost: each landed on the one before.
        assert outcome.counter == outcome.increments, report
        assert outcome.increments == outcome.counts["increments"], report
        # The lost-lock path ran, and every majority partition took its lock.
        assert outcome.cut_off, report
        assert not outcome.kept, f"locks kept through a majority partition: {report}"
        assert outcome.counts["lost"] >= len(outcome.cut_off), report
        assert outcome.errors == 0, report
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        # Keys whose outcome was unknown (a stopped node, a cut link) expire by
        # their TTL: after it, nothing may remain.
        await asyncio.sleep(TTL + 0.5)
        assert lock_keys(cluster5) == [0] * len(cluster5)
    finally:
        for proc in workers:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for row in proxies:
            for proxy in row:
                await proxy.aclose()
        store.stop()
        for server in cluster5:  # a failed run may leave a limit behind
            if server.running and not server.paused:
                with contextlib.suppress(Exception):
                    server.command("CONFIG", "SET", "maxmemory", "0")


def test_a_tiny_maxmemory_refuses_writes(redis_binary: str) -> None:
    """The soak's maxmemory fault does refuse writes on this server build."""
    with RedisServer(binary=redis_binary) as server:
        server.command("CONFIG", "SET", "maxmemory", TINY_MAXMEMORY)
        with pytest.raises(RedisReplyError, match="OOM"):
            server.command("SET", "k", "v")
