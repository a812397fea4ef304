"""One OS process of the soak test: several clients, each with its own
AsyncRedlock, take turns on one resource and do a read-increment-write of a
counter in the protected store (:class:`ProtectedStore`, in the parent) inside
the lock, recording every holding.

Run by test_soak.py as ``python soak_worker.py CONFIG_JSON``. Its stdin is the
parent's channel: a line ``long`` asks for one long hold (the next client to get
the lock keeps it for several TTLs, writing a heartbeat), end of file asks the
clients to stop. It prints its counts and a digest of its log records as one
JSON line at the end, not each record as it comes.

A write goes out only while the lock has more than half its TTL left, and it is
shielded from the lock's cancellation until the store has answered: a write
abandoned in flight could land after the next holder started, which a fencing
token would refuse but this store only records. So a store violation means a
real one: two holders at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
from collections import Counter
from typing import TYPE_CHECKING

import anyio

from redlock_aio import AsyncRedlock, LockLost, LockNotAcquired, RedlockError
from redlock_aio.testing import MutexChecker, StoreClient

if TYPE_CHECKING:
    from redlock_aio import Lock

RESOURCE = "soak"
#: How long a long hold lasts, in TTLs, unless the lock is lost first.
LONG_HOLD_TTLS = 4
#: Errors worth showing in full: each kind's first few go to stderr.
_ERRORS_SHOWN = 3


class LogDigest(logging.Handler):
    """Counts log records by level and message template instead of printing
    them: a fault schedule makes the library warn about the same thing many
    times. Errors (a bug, or a leaked task) are also shown on stderr, the first
    few of each kind in full."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.errors = 0

    def emit(self, record: logging.LogRecord) -> None:
        kind = f"{record.levelname} {record.name}: {record.msg}"
        self.counts[kind] += 1
        if record.levelno >= logging.ERROR:
            self.errors += 1
            if self.counts[kind] <= _ERRORS_SHOWN:
                sys.stderr.write(logging.Formatter().format(record) + "\n")


class Worker:
    """The clients of this process, and what they share: the checker, the
    counts, the long-hold requests and the stop signal."""

    def __init__(self, config: dict[str, object]) -> None:
        self.name = str(config["name"])
        urls = config["urls"]
        assert isinstance(urls, list)
        self.urls: list[str] = urls
        self.ttl = float(config["ttl"])  # type: ignore[arg-type]
        self.node_timeout = float(config["node_timeout"])  # type: ignore[arg-type]
        self.store_port = int(config["store_port"])  # type: ignore[call-overload]
        self.checker = MutexChecker()
        self.counts: Counter[str] = Counter()
        self.long_holds_asked = 0
        self.stop = asyncio.Event()

    async def client(self, index: int) -> None:
        name = f"{self.name}.{index}"
        rng = random.Random(name)
        async with (
            StoreClient("127.0.0.1", self.store_port) as store,
            AsyncRedlock(
                self.urls,
                ttl=self.ttl,
                node_timeout=self.node_timeout,
                retry_delay=0.01,
                retry_delay_max=0.2,
            ) as rl,
        ):
            while not self.stop.is_set():
                try:
                    async with rl.lock(RESOURCE, timeout=2 * self.ttl) as lock:
                        granted = self.checker.granted()
                        self.counts["acquired"] += 1
                        try:
                            if self.long_holds_asked:
                                self.long_holds_asked -= 1
                                await self.long_hold(name, lock, store)
                            else:
                                await self.increment(name, lock, store, rng)
                        finally:
                            self.checker.record(name, lock, granted)
                except LockNotAcquired:
                    self.counts["not_acquired"] += 1
                except LockLost:
                    self.counts["lost"] += 1
                except RedlockError as exc:
                    self.counts[f"error {type(exc).__name__}"] += 1
                await asyncio.sleep(rng.uniform(0, 0.005))

    async def increment(
        self, name: str, lock: Lock, store: StoreClient, rng: random.Random
    ) -> None:
        """Read the counter, think a little, write it plus one."""
        value = int(await store.read("counter") or 0)
        await asyncio.sleep(rng.uniform(0, 0.02))
        if await self.write(store, "counter", str(value + 1), lock, name):
            self.counts["increments"] += 1

    async def long_hold(self, name: str, lock: Lock, store: StoreClient) -> None:
        """Keep the lock (auto-extended) for several TTLs, writing a heartbeat
        every quarter TTL; the parent cuts this process off from a majority of
        nodes meanwhile, so the lock must be lost."""
        self.counts["long_holds"] += 1
        loop = asyncio.get_running_loop()
        end = loop.time() + LONG_HOLD_TTLS * self.ttl
        beat = 0
        while loop.time() < end and not self.stop.is_set():
            if await self.write(store, "long", f"{name}:{beat}", lock, name):
                beat += 1
            await asyncio.sleep(self.ttl / 4)

    async def write(
        self, store: StoreClient, key: str, value: str, lock: Lock, name: str
    ) -> bool:
        """Write under the lock if it has comfortable validity left, shielded
        from its cancellation; True if written."""
        if lock.remaining() <= self.ttl / 2:
            self.counts["writes_skipped"] += 1
            return False
        with anyio.CancelScope(shield=True):
            accepted = await store.write(key, value, lock=lock, writer=name)
        self.counts["writes" if accepted else "writes_refused"] += 1
        return accepted

    async def listen(self) -> None:
        """Follow the parent's requests on stdin until it closes it."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
        )
        try:
            while line := await reader.readline():
                if line.strip() == b"long":
                    self.long_holds_asked += 1
        finally:
            transport.close()
            self.stop.set()


async def main(config: dict[str, object]) -> None:
    digest = LogDigest()
    root = logging.getLogger()
    root.addHandler(digest)
    root.setLevel(logging.WARNING)
    worker = Worker(config)
    clients = int(config["clients"])  # type: ignore[call-overload]
    await asyncio.gather(worker.listen(), *map(worker.client, range(clients)))
    worker.checker.dump(str(config["out"]))
    report = {"counts": worker.counts, "log": digest.counts, "errors": digest.errors}
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
