"""The benchmark's own minimal Redlock code, the floors the libraries are
compared with. Neither uses redlock_aio.

- :class:`MuxFloor`: one asyncio ``Protocol`` connection per node, replies parsed
  by a ``hiredis.Reader``, requests pipelined and answered through a FIFO of
  futures. Acquire = ``SET k tok NX PX ttl`` to every node at once, wait for all;
  release = ``EVALSHA <compare-and-delete> 1 k tok`` to all. Two round trips and
  nearly nothing else: the lower bound of a Redlock in Python.
- :class:`GatherFloor`: the same on redis-py's asyncio client:
  ``asyncio.gather`` of ``set(nx=True, px=...)``, then of a registered script.

Blocking acquire (scenario 3) retries after a random 25-50 ms, without growth.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import secrets
import time
from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar, cast
from urllib.parse import urlsplit

import hiredis
from redis.asyncio import Redis

from ._common import Impl

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

RELEASE_LUA = (
    'if redis.call("GET", KEYS[1]) == ARGV[1] then '
    'return redis.call("DEL", KEYS[1]) end return 0'
)
EXTEND_LUA = (
    'if redis.call("GET", KEYS[1]) == ARGV[1] then '
    'return redis.call("PEXPIRE", KEYS[1], ARGV[2]) end return 0'
)
RELEASE_SHA = hashlib.sha1(RELEASE_LUA.encode()).hexdigest().encode()
EXTEND_SHA = hashlib.sha1(EXTEND_LUA.encode()).hexdigest().encode()

#: Floors' retry delay range when waiting for a held lock, seconds.
FLOOR_RETRY = (0.025, 0.05)
DRIFT_FACTOR = 0.01


def encode(*args: bytes) -> bytes:
    """A RESP2 command."""
    parts = [b"*%d\r\n" % len(args)]
    parts += [b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args]
    return b"".join(parts)


class MuxConnection(asyncio.Protocol):
    """One pipelined connection: every request gets a future, answered in order."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._transport: asyncio.Transport | None = None
        self._lost: Exception | None = None

    @classmethod
    async def open(cls, url: str) -> MuxConnection:
        parts = urlsplit(url)
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(
            cls, parts.hostname or "127.0.0.1", parts.port or 6379
        )
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's or uvloop's (whose classes are not asyncio.Transport's).
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiters = self._waiters
        while (reply := self._reader.gets()) is not False:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionError("connection closed")
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(self._lost)

    def request(self, payload: bytes) -> asyncio.Future[Any]:
        fut = asyncio.get_running_loop().create_future()
        if self._lost is not None or self._transport is None:
            fut.set_exception(self._lost or ConnectionError("not connected"))
            return fut
        self._transport.write(payload)
        self._waiters.append(fut)
        return fut

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def _all(futures: Sequence[asyncio.Future[Any]]) -> list[Any]:
    return [await f for f in futures]


class MuxFloor(Impl):
    """The minimal pipelined floor (see the module docstring)."""

    name: ClassVar[str] = "floor (mux)"
    note: ClassVar[str] = "benchmark's own: Protocol + hiredis; waits for all nodes"
    can_hold: ClassVar[bool] = True

    def __init__(self, urls: Sequence[str]) -> None:
        super().__init__(urls)
        self._conns: list[MuxConnection] = []
        self._connecting: asyncio.Task[list[MuxConnection]] | None = None
        self.quorum = len(self.urls) // 2 + 1
        self._held: dict[bytes, bytes] = {}
        self._lost: set[bytes] = set()
        self._extender: asyncio.Task[None] | None = None

    async def _connect(self) -> list[MuxConnection]:
        """Connect once (concurrent first callers share the attempt)."""
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._open())
        self._conns = await asyncio.shield(self._connecting)
        return self._conns

    async def _open(self) -> list[MuxConnection]:
        conns = [await MuxConnection.open(u) for u in self.urls]
        for script in (RELEASE_LUA, EXTEND_LUA):
            await _all(
                [c.request(encode(b"SCRIPT", b"LOAD", script.encode())) for c in conns]
            )
        return conns

    async def acquire(self, key: str, ttl: float) -> tuple[bytes, bytes] | None:
        conns = self._conns or await self._connect()
        k = key.encode()
        token = secrets.token_bytes(20)
        payload = encode(b"SET", k, token, b"NX", b"PX", b"%d" % int(ttl * 1000))
        start = time.monotonic()
        futures = [c.request(payload) for c in conns]
        granted = 0
        for fut in futures:
            if await fut == b"OK":
                granted += 1
        validity = ttl * (1 - DRIFT_FACTOR) - 0.002 - (time.monotonic() - start)
        if granted >= self.quorum and validity > 0:
            return k, token
        await self._release(k, token)
        return None

    async def acquire_wait(self, key: str, ttl: float) -> tuple[bytes, bytes]:
        # Polling with a delay is the retry policy being measured.
        while (handle := await self.acquire(key, ttl)) is None:  # noqa: ASYNC110
            await asyncio.sleep(random.uniform(*FLOOR_RETRY))
        return handle

    async def _release(self, k: bytes, token: bytes) -> int:
        payload = encode(b"EVALSHA", RELEASE_SHA, b"1", k, token)
        return sum(
            r == 1 for r in await _all([c.request(payload) for c in self._conns])
        )

    async def release(self, handle: object) -> None:
        k, token = cast("tuple[bytes, bytes]", handle)
        await self._release(k, token)

    async def hold(
        self, key: str, ttl: float, stop: asyncio.Event, ready: Callable[[], None]
    ) -> bool:
        """Held locks are extended by one task every third of the TTL: one
        pipelined ``EVALSHA <compare-and-pexpire>`` per lock and node."""
        k, token = await self.acquire_wait(key, ttl)
        self._held[k] = token
        if self._extender is None:
            loop = asyncio.get_running_loop()
            self._extender = loop.create_task(self._extend_all(ttl))
        ready()
        try:
            await stop.wait()
        finally:
            del self._held[k]
            await self._release(k, token)
        return k in self._lost

    async def _extend_all(self, ttl: float) -> None:
        px = b"%d" % (ttl * 1000)
        while True:
            await asyncio.sleep(ttl / 3)
            held = list(self._held.items())
            futures = [
                [
                    c.request(encode(b"EVALSHA", EXTEND_SHA, b"1", k, t, px))
                    for k, t in held
                ]
                for c in self._conns
            ]
            extended = [0] * len(held)
            for node_futures in futures:
                for i, fut in enumerate(node_futures):
                    extended[i] += await fut == 1
            for (k, _), n in zip(held, extended, strict=True):
                if n < self.quorum and k in self._held:  # not released meanwhile
                    self._lost.add(k)

    async def aclose(self) -> None:
        for task in (self._connecting, self._extender):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for conn in self._conns:
            conn.close()
        self._conns = []
        await asyncio.sleep(0)


class GatherFloor(Impl):
    """``asyncio.gather`` over redis-py asyncio clients (one per node)."""

    name: ClassVar[str] = "floor (redis-py gather)"
    note: ClassVar[str] = "benchmark's own: redis-py clients + gather; waits for all"
    no_hold: ClassVar[str] = "n/a (the mux floor is the extension floor)"

    def __init__(self, urls: Sequence[str]) -> None:
        super().__init__(urls)
        self._clients = [Redis.from_url(u) for u in self.urls]
        self._scripts = [c.register_script(RELEASE_LUA) for c in self._clients]
        self.quorum = len(self.urls) // 2 + 1

    async def acquire(self, key: str, ttl: float) -> tuple[str, bytes] | None:
        token = secrets.token_bytes(20)
        px = int(ttl * 1000)
        start = time.monotonic()
        replies = await asyncio.gather(
            *(c.set(key, token, nx=True, px=px) for c in self._clients)
        )
        validity = ttl * (1 - DRIFT_FACTOR) - 0.002 - (time.monotonic() - start)
        if sum(bool(r) for r in replies) >= self.quorum and validity > 0:
            return key, token
        await self.release((key, token))
        return None

    async def acquire_wait(self, key: str, ttl: float) -> tuple[str, bytes]:
        # Polling with a delay is the retry policy being measured.
        while (handle := await self.acquire(key, ttl)) is None:  # noqa: ASYNC110
            await asyncio.sleep(random.uniform(*FLOOR_RETRY))
        return handle

    async def release(self, handle: object) -> None:
        key, token = cast("tuple[str, bytes]", handle)
        await asyncio.gather(*(s(keys=[key], args=[token]) for s in self._scripts))

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


async def present_on_quorum(urls: Sequence[str], keys: Sequence[str]) -> int:
    """How many of ``keys`` exist on a majority of the nodes."""
    per_key = [0] * len(keys)
    for url in urls:
        conn = await MuxConnection.open(url)
        try:
            replies = await _all(
                [conn.request(encode(b"EXISTS", k.encode())) for k in keys]
            )
        finally:
            conn.close()
        for i, r in enumerate(replies):
            per_key[i] += r == 1
    need = len(urls) // 2 + 1
    return sum(c >= need for c in per_key)
