"""A fake clock and an in-memory fake node for focused unit tests of the
algorithm. Integration tests use real redis-server processes instead."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class FakeClock:
    """A monotonic clock that moves only when told to."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeNode:
    """An in-memory node. Each request advances the fake clock by ``delay``
    (simulated round-trip time), may hang until ``gate`` is set, or raise
    ``error``. Keys expire on the fake clock."""

    name: str
    clock: FakeClock
    delay: float = 0.0
    error: Exception | None = None
    hang: bool = False
    gate: asyncio.Event | None = None
    store: dict[bytes, tuple[bytes, float]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    closed: bool = False
    #: Marker keys (server time in ms as bytes, or b"0"). ``None``: a node
    #: initialised for every key prefix; ``lose_data()`` makes it ``{}``.
    markers: dict[bytes, bytes] | None = None

    @property
    def identity(self) -> str:
        return self.name

    def get(self, key: bytes) -> bytes | None:
        item = self.store.get(key)
        if item is None or item[1] <= self.clock():
            self.store.pop(key, None)
            return None
        return item[0]

    async def _serve(self, op: str) -> None:
        self.calls.append(op)
        if self.hang:
            await asyncio.Event().wait()
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)
        self.clock.advance(self.delay)
        if self.error is not None:
            raise self.error

    async def set_nx(self, key: bytes, token: bytes, ttl_ms: int) -> bool:
        await self._serve("set")
        if self.get(key) is not None:
            return False
        self.store[key] = (token, self.clock() + ttl_ms / 1000)
        return True

    async def acquire(
        self, key: bytes, token: bytes, ttl_ms: int, marker: bytes, quarantine_ms: int
    ) -> object:
        """The acquire script (``_scripts.ACQUIRE``), on the fake clock."""
        await self._serve("set")
        now = round(self.clock() * 1000)
        markers = self.markers
        since = b"0" if markers is None else markers.get(marker)
        wait, fresh = 0, 0
        if since != b"0":
            start = None if since is None else int(since)
            if start is None or start > now:
                fresh = int(since is None)
                start = now
                markers[marker] = b"%d" % now  # type: ignore[index]
            wait = start + quarantine_ms - now
        if self.get(key) is not None:
            return 0
        self.store[key] = (token, self.clock() + ttl_ms / 1000)
        return [wait, fresh] if wait > 0 else 1

    async def init_marker(self, marker: bytes) -> None:
        await self._serve("init")
        if self.markers is not None:
            self.markers[marker] = b"0"

    def lose_data(self) -> None:
        """A restart without persistence: every key and marker is gone."""
        self.store.clear()
        self.markers = {}

    async def release(self, key: bytes, token: bytes, *, notify: bool = True) -> bool:
        await self._serve("release")
        if self.get(key) == token:
            del self.store[key]
            return True
        return False

    async def extend(self, key: bytes, token: bytes, ttl_ms: int) -> bool:
        await self._serve("extend")
        if self.get(key) == token:
            self.store[key] = (token, self.clock() + ttl_ms / 1000)
            return True
        return False

    async def extend_many(self, items: list[tuple[bytes, bytes, int]]) -> list[bool]:
        await self._serve("extend_many")
        out = []
        for key, token, ttl_ms in items:
            ok = self.get(key) == token
            if ok:
                self.store[key] = (token, self.clock() + ttl_ms / 1000)
            out.append(ok)
        return out

    async def aclose(self) -> None:
        self.closed = True


def fake_nodes(n: int, clock: FakeClock, **kwargs: object) -> list[FakeNode]:
    return [FakeNode(f"fake{i}", clock, **kwargs) for i in range(n)]  # type: ignore[arg-type]
