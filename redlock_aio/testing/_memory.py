"""An in-memory :class:`~redlock_aio.Node` for focused unit tests of code that
uses locks: no server, keys that expire on an injectable clock, and knobs for
faults (a delay per request, an error, a hang, a gate).

It runs the library's commands by their meaning (``SET NX PX`` and the Lua
scripts of :mod:`redlock_aio._scripts`), one operation method each, so a test
can override one to record or distort it. Integration tests use real
redis-server processes instead (:class:`~._servers.LocalCluster`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from .. import _scripts
from .._node import submit_as_task

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._commands import Command
    from .._node import OnDone


@dataclass
class InMemoryNode:
    """A node whose keys live in a dict.

    :ivar delay: seconds each request moves ``clock`` forward, if it can be
        moved (an ``advance(seconds)`` method): a simulated round trip.
    :ivar error: raised by every request while set.
    :ivar hang: every request waits for ever while set (until its timeout).
    :ivar gate: every request waits for this event while set.
    :ivar calls: each operation run, in order (``set``, ``release``,
        ``extend``, ``extend_many``, ``init``, ``call``).
    :ivar markers: marker keys (server time in ms, or ``b"0"``); ``None``: a
        node initialised for every key prefix. :meth:`lose_data` makes it empty.
    """

    name: str
    clock: Callable[[], float] = time.monotonic
    delay: float = 0.0
    error: Exception | None = None
    hang: bool = False
    gate: asyncio.Event | None = None
    store: dict[bytes, tuple[bytes, float]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    closed: bool = False
    markers: dict[bytes, bytes] | None = None

    @property
    def identity(self) -> str:
        return self.name

    # -- the Node protocol ---------------------------------------------------------

    def submit(
        self,
        command: Command,
        *,
        timeout: float,
        after: asyncio.Future[object] | None = None,
        on_done: OnDone | None = None,
        not_after: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> asyncio.Future[object]:
        return submit_as_task(
            self._execute,
            command,
            timeout=timeout,
            after=after,
            on_done=on_done,
            not_after=not_after,
            loop=loop,
        )

    async def aclose(self) -> None:
        self.closed = True

    async def _execute(self, command: Command) -> object:
        return await self.execute(command.args)

    async def execute(self, args: tuple[Any, ...]) -> object:
        """Run one command by its arguments; its raw RESP2 reply."""
        name = str(args[0]).upper()
        if name == "SET" and len(args) == 6:
            key, token, ttl_ms = _b(args[1]), _b(args[2]), int(args[5])
            return b"OK" if await self.set_nx(key, token, ttl_ms) else None
        if name == "SET" and len(args) == 3 and _b(args[2]) == b"0":
            await self.init_marker(_b(args[1]))
            return b"OK"
        if name != "EVALSHA":
            await self._serve("call")
            if name == "PING":
                return b"PONG"
            raise ResponseError(f"unknown command '{args[0]}' (in-memory node)")
        sha, count = str(args[1]), int(args[2])
        keys = [_b(k) for k in args[3 : 3 + count]]
        argv = list(args[3 + count :])
        if sha == _scripts.ACQUIRE_SHA:
            return await self.acquire(
                keys[0], _b(argv[0]), int(argv[1]), keys[1], int(argv[2])
            )
        if sha in (_scripts.RELEASE_SHA, _scripts.RELEASE_QUIET_SHA):
            notify = sha == _scripts.RELEASE_SHA
            return int(await self.release(keys[0], _b(argv[0]), notify=notify))
        if sha == _scripts.EXTEND_SHA:
            return int(await self.extend(keys[0], _b(argv[0]), int(argv[1])))
        if sha == _scripts.EXTEND_MANY_SHA:
            items = [
                (key, _b(argv[2 * i]), int(argv[2 * i + 1]))
                for i, key in enumerate(keys)
            ]
            return [int(ok) for ok in await self.extend_many(items)]
        raise ResponseError("NOSCRIPT No matching script (in-memory node)")

    # -- the operations ------------------------------------------------------------

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
        advance = getattr(self.clock, "advance", None)
        if advance is not None and self.delay:
            advance(self.delay)
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
        """The acquire script (``_scripts.ACQUIRE``), on this node's clock."""
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
                assert markers is not None
                markers[marker] = b"%d" % now
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


def _b(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return str(value).encode()
