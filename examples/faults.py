"""Testing code under node faults with redlock_aio.testing: a client cut off
from one node keeps its lock; when a second node hangs too, the lock is lost,
the block is cancelled and LockLost raised; the checker confirms no overlap.

Run: python examples/faults.py   (starts 3 local redis-server nodes)
"""

from __future__ import annotations

import asyncio

from redlock_aio import AsyncRedlock, LockLost
from redlock_aio.testing import FaultProxy, LocalCluster, MutexChecker


async def main(cluster: LocalCluster) -> None:
    checker = MutexChecker()
    proxy = await FaultProxy("127.0.0.1", cluster[0].port).start()
    urls = [proxy.url, *cluster.urls[1:]]  # this client reaches node 0 via proxy
    async with AsyncRedlock(urls, ttl=1.0, restart_quarantine=0) as redlock:
        try:
            async with redlock.lock("job") as lock:
                granted = checker.granted()
                proxy.blackhole()  # cut off from node 0: 2 of 3 still hold
                await asyncio.sleep(2)
                print(f"still held with one node cut off: {lock.held}")
                cluster[1].pause()  # node 1 hangs too: no quorum any more
                await asyncio.sleep(5)
                print("never printed: the block is cancelled")
        except LockLost as exc:
            print(f"lost, block cancelled: {exc}")
        finally:
            cluster[1].resume()
        checker.record("me", lock, granted)
    await proxy.aclose()
    assert not checker.violations()


if __name__ == "__main__":
    with LocalCluster(3) as nodes:
        asyncio.run(main(nodes))
