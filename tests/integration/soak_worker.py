"""One OS process of the soak test: several clients, each with its own
AsyncRedlock, take turns on one resource and do a read-sleep-write on a shared
counter (on a separate data node) inside the lock, recording every holding.

Run by test_soak.py as ``python soak_worker.py CONFIG_JSON``; prints its
counts as one JSON line at the end.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

import redis.asyncio

from redlock_aio import AsyncRedlock, LockLost, LockNotAcquired, RedlockError
from redlock_aio.testing import MutexChecker


async def client(
    name: str, config: dict[str, object], checker: MutexChecker, counts: dict[str, int]
) -> None:
    rng = random.Random(name)
    urls = config["urls"]
    assert isinstance(urls, list)
    ttl = float(config["ttl"])  # type: ignore[arg-type]
    stop_at = time.monotonic() + float(config["duration"])  # type: ignore[arg-type]
    data = redis.asyncio.Redis.from_url(str(config["data_url"]))
    try:
        async with AsyncRedlock(
            urls, ttl=ttl, node_timeout=0.2, retry_delay=0.01, retry_delay_max=0.2
        ) as rl:
            while time.monotonic() < stop_at:
                try:
                    async with rl.lock("soak", timeout=2.0) as lock:
                        granted = checker.granted()
                        counts["acquired"] += 1
                        try:
                            value = int(await data.get("counter") or 0)
                            await asyncio.sleep(rng.uniform(0, 0.02))
                            # A write cancelled in flight (lock lost) may still
                            # land: counted as started, not as completed.
                            counts["writes_started"] += 1
                            await data.set("counter", value + 1)
                            counts["sections"] += 1
                        finally:
                            checker.record(name, lock, granted)
                except LockNotAcquired:
                    counts["not_acquired"] += 1
                except LockLost:
                    counts["lost"] += 1
                except RedlockError:
                    counts["other_errors"] += 1
                await asyncio.sleep(rng.uniform(0, 0.005))
    finally:
        await data.aclose()


async def main(config: dict[str, object]) -> None:
    checker = MutexChecker()
    counts = dict.fromkeys(
        (
            "acquired",
            "writes_started",
            "sections",
            "not_acquired",
            "lost",
            "other_errors",
        ),
        0,
    )
    prefix = str(config["name"])
    clients = int(config["clients"])  # type: ignore[arg-type]
    await asyncio.gather(
        *(client(f"{prefix}.{i}", config, checker, counts) for i in range(clients))
    )
    checker.dump(str(config["out"]))
    sys.stdout.write(json.dumps(counts) + "\n")


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
