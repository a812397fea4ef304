"""A long job guarded by a lock that is re-extended while it runs, and what
happens when the lock is lost: the job is cancelled and LockLost is raised.

Run: python examples/long_task.py   (starts 3 local redis-server nodes)
"""

from __future__ import annotations

import asyncio

from redlock_aio import AsyncRedlock, LockLost
from redlock_aio.testing import LocalCluster


async def job(step_seconds: float, steps: int) -> None:
    for i in range(steps):
        await asyncio.sleep(step_seconds)
        print(f"  step {i + 1}/{steps} done")


async def main(cluster: LocalCluster) -> None:
    # Nodes started just now hold no older lock: no restart quarantine.
    async with AsyncRedlock(
        cluster.urls, ttl=1.0, node_timeout=0.2, restart_quarantine=0
    ) as redlock:
        print("a job three times as long as the TTL:")
        async with redlock.lock("reports:daily"):
            await job(0.5, 6)

        print("the same job, but two of three nodes die half-way:")
        try:
            async with redlock.lock("reports:daily"):
                await job(0.5, 2)
                cluster[0].kill()
                cluster[1].kill()
                await job(0.5, 6)
        except LockLost as exc:
            print(f"  stopped: {exc}")


if __name__ == "__main__":
    with LocalCluster(3) as nodes:
        asyncio.run(main(nodes))
