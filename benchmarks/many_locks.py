"""Hold many locks under auto-extension and measure what it costs the client.

``python benchmarks/many_locks.py [--count 10000] [--ttl 10] [--hold 60]``

Starts a local cluster (:class:`redlock_aio.testing.LocalCluster`), enters
``--count`` ``async with redlock.lock(...)`` blocks, each in its own task (at
most ``--concurrency`` acquisitions in flight), holds them all for ``--hold``
seconds, then ends the blocks in waves of ``--release-wave``. Prints one line:
locks lost (``on_lost`` calls), the client process's CPU during the hold
(``time.process_time()`` delta over wall time, in % of one core), the
keeper's requests (one per node per batch) and lock extensions during the hold, the largest event-loop
lag seen (a 100 ms sleep that overshot), the time to acquire and to release
everything, release errors, and the keys left on the nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import gc
import sys
import time
from pathlib import Path


async def run(args: argparse.Namespace) -> str:
    from redlock_aio import AsyncRedlock, Lock, ReleaseError
    from redlock_aio.testing import LocalCluster

    count: int = args.count
    # Garbage-collector pauses (seconds), to tell them from the library's own work.
    gc_pause: list[float] = []
    gc_t0 = 0.0

    def on_gc(phase: str, info: dict[str, int]) -> None:
        nonlocal gc_t0
        if phase == "start":
            gc_t0 = time.perf_counter()
        elif info["generation"] == 2:
            gc_pause.append(time.perf_counter() - gc_t0)

    gc.callbacks.append(on_gc)
    lost: collections.Counter[str] = collections.Counter()

    def on_lost(lock: Lock) -> None:
        lost[lock._lost_reason or "?"] += 1

    cluster = LocalCluster(args.nodes).start()
    try:
        async with AsyncRedlock(cluster.urls, ttl=args.ttl, restart_quarantine=0) as rl:
            gate = asyncio.Semaphore(args.concurrency)
            wave_size: int = args.release_wave
            waves = [asyncio.Event() for _ in range(0, count, wave_size)]
            entered = 0
            all_in = asyncio.Event()

            async def hold(i: int) -> None:
                nonlocal entered
                await gate.acquire()
                opened = False
                try:
                    async with rl.lock(f"bench:{i}", on_lost=on_lost):
                        gate.release()
                        opened = True
                        entered += 1
                        if entered == count:
                            all_in.set()
                        await waves[i // wave_size].wait()
                finally:
                    if not opened:
                        gate.release()

            lag = 0.0

            async def watch_lag() -> None:
                nonlocal lag
                while True:
                    t = time.perf_counter()
                    await asyncio.sleep(0.1)
                    lag = max(lag, time.perf_counter() - t - 0.1)

            t_start = time.perf_counter()
            tasks = [asyncio.create_task(hold(i)) for i in range(count)]
            await all_in.wait()
            acquire_s = time.perf_counter() - t_start
            extender = rl._keeper
            assert extender is not None
            requests0 = extender.batches * len(rl.nodes)
            extensions0 = extender.extensions
            lagger = asyncio.create_task(watch_lag())
            profiler = cProfile.Profile() if args.profile else None
            gc_pause.clear()
            wall0, cpu0 = time.perf_counter(), time.process_time()
            if profiler is not None:
                profiler.enable()
            await asyncio.sleep(args.hold)
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile)
            wall = time.perf_counter() - wall0
            cpu = time.process_time() - cpu0
            gc_pauses = list(gc_pause)
            lagger.cancel()
            requests = extender.batches * len(rl.nodes) - requests0
            extensions = extender.extensions - extensions0
            lost_in_hold = sum(lost.values())

            t_release = time.perf_counter()
            release_errors = 0
            other_errors: collections.Counter[str] = collections.Counter()
            for w, stop in enumerate(waves):
                stop.set()
                wave = tasks[w * wave_size : (w + 1) * wave_size]
                for result in await asyncio.gather(*wave, return_exceptions=True):
                    if isinstance(result, ReleaseError):
                        release_errors += 1
                    elif isinstance(result, BaseException):
                        other_errors[type(result).__name__] += 1
            release_s = time.perf_counter() - t_release
        keys_left = cluster.dbsize()
    finally:
        cluster.stop()

    reasons = "; ".join(f"{n} x {why}" for why, n in lost.items())
    return (
        f"many_locks: count={count} ttl={args.ttl:g}s nodes={args.nodes} "
        f"hold={wall:.1f}s lost={lost_in_hold} "
        f"cpu={100 * cpu / wall:.1f}% of one core "
        f"requests={requests} ({requests / wall:.1f}/s) "
        f"extensions={extensions} ({extensions / wall:.0f}/s) "
        f"max_loop_lag={lag * 1000:.0f}ms "
        f"gen2_gc={len(gc_pauses)}x max {max(gc_pauses, default=0) * 1000:.0f}ms "
        f"acquire_all={acquire_s:.1f}s release_all={release_s:.1f}s "
        f"release_errors={release_errors} other_errors={dict(other_errors)} "
        f"keys_left={keys_left}" + (f" lost_reasons=[{reasons}]" if reasons else "")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="locks held")
    parser.add_argument("--ttl", type=float, default=10.0, help="lock TTL, seconds")
    parser.add_argument("--hold", type=float, default=60.0, help="seconds held")
    parser.add_argument("--nodes", type=int, default=3, help="redis-server nodes")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=100,
        help="acquisitions in flight at once",
    )
    parser.add_argument(
        "--profile", metavar="FILE", help="cProfile the hold into FILE (pstats)"
    )
    parser.add_argument(
        "--release-wave", type=int, default=100, help="blocks ended together"
    )
    args = parser.parse_args()
    # Run as a script: make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    print(asyncio.run(run(args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
