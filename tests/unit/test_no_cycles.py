"""Objects of the hot path are freed by reference counting: 10,000 acquire +
release cycles (and lock() blocks) with the garbage collector disabled leave
(almost) nothing for ``gc.collect()`` to free. A reference cycle per request or
per round would leave thousands, and in production every one of them waits for
a full collection (tens of milliseconds each, under load).

The nodes are MuxNodes on an in-process fake transport (the real transport
code, no sockets), and in-memory nodes.
"""

from __future__ import annotations

import asyncio
import gc
from typing import TYPE_CHECKING, ClassVar, TypeVar

import hiredis

from redlock_aio import AsyncRedlock, MuxNode, _scripts
from redlock_aio.testing import InMemoryNode

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

_P = TypeVar("_P", bound=asyncio.Protocol)

CYCLES = 10_000
#: What one-off objects (caches, the first connection, logging) may leave.
SLACK = 200


class FakeServer(asyncio.Transport):
    """Answers the commands a client sends, in process: SET NX, the lock
    scripts by SHA, and the connection set-up."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._protocol = protocol
        self._reader = hiredis.Reader()
        self._keys: dict[bytes, bytes] = {}
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self._reader.feed(data)
        out = []
        command = self._reader.gets()
        while command is not False:
            out.append(self._answer(command))
            command = self._reader.gets()
        self._loop.call_soon(self._protocol.data_received, b"".join(out))

    def _answer(self, args: list[bytes]) -> bytes:
        name = args[0].upper()
        if name == b"SET" and len(args) == 6:
            if args[1] in self._keys:
                return b"$-1\r\n"
            self._keys[args[1]] = args[2]
            return b"+OK\r\n"
        if name == b"EVALSHA":
            sha = args[1].decode()
            key, token = args[3], args[4]
            if sha in (_scripts.RELEASE_SHA, _scripts.RELEASE_QUIET_SHA):
                if self._keys.get(key) == token:
                    del self._keys[key]
                    return b":1\r\n"
                return b":0\r\n"
            if sha == _scripts.EXTEND_SHA:
                return b":1\r\n" if self._keys.get(key) == token else b":0\r\n"
            if sha == _scripts.EXTEND_MANY_SHA:
                count = int(args[2])
                votes = [
                    self._keys.get(args[3 + i]) == args[3 + count + 2 * i]
                    for i in range(count)
                ]
                return b"*%d\r\n" % count + b"".join(
                    b":1\r\n" if v else b":0\r\n" for v in votes
                )
            return b"-NOSCRIPT No matching script\r\n"
        if name == b"CONFIG":
            return b"*2\r\n$16\r\nmaxmemory-policy\r\n$10\r\nnoeviction\r\n"
        if name == b"SCRIPT":
            digest = _scripts.sha1(args[2].decode()).encode()
            return b"$40\r\n" + digest + b"\r\n"
        return b"+OK\r\n"

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        self._loop.call_soon(self._protocol.connection_lost, None)

    def close(self) -> None:
        self.abort()


class InProcessNode(MuxNode):
    """A MuxNode whose connection is a :class:`FakeServer` (or ``server``)."""

    __slots__ = ()

    server: ClassVar[type[FakeServer]] = FakeServer

    async def _create(self, factory: Callable[[], _P]) -> _P:
        protocol = factory()
        protocol.connection_made(self.server(protocol))
        return protocol


async def garbage_after(cycle: Callable[[int], Awaitable[None]]) -> int:
    """What ``gc.collect()`` frees after CYCLES calls of ``cycle`` with the
    collector disabled (warmed up first)."""
    for i in range(100):
        await cycle(i)
    gc.collect()
    gc.disable()
    try:
        for i in range(CYCLES):
            await cycle(i)
        return gc.collect()
    finally:
        gc.enable()


def mux_nodes() -> list[MuxNode]:
    return [InProcessNode(host="127.0.0.1", port=7000 + i) for i in range(3)]


async def test_acquire_and_release_leave_no_cycles_on_mux_nodes() -> None:
    async with AsyncRedlock(mux_nodes(), restart_quarantine=0) as rl:

        async def cycle(i: int) -> None:
            lock = await rl.acquire(f"k{i % 64}")
            await lock.release()

        assert await garbage_after(cycle) < SLACK


async def test_lock_blocks_leave_no_cycles_on_mux_nodes() -> None:
    async with AsyncRedlock(mux_nodes(), restart_quarantine=0) as rl:

        async def cycle(i: int) -> None:
            async with rl.lock(f"k{i % 64}"):
                pass

        assert await garbage_after(cycle) < SLACK


async def test_a_refused_attempt_leaves_no_cycles() -> None:
    async with AsyncRedlock(mux_nodes(), restart_quarantine=0) as rl:
        held = await rl.acquire("held")

        async def cycle(i: int) -> None:
            try:
                await rl.acquire("held", blocking=False)
            except Exception:  # noqa: BLE001, S110 (LockNotAcquired, as expected)
                pass

        assert await garbage_after(cycle) < SLACK
        await held.release()


async def test_acquire_and_release_leave_no_cycles_on_in_memory_nodes() -> None:
    nodes = [InMemoryNode(f"m{i}") for i in range(3)]
    async with AsyncRedlock(nodes, restart_quarantine=0) as rl:

        async def cycle(i: int) -> None:
            lock = await rl.acquire(f"k{i % 64}")
            await lock.release()

        assert await garbage_after(cycle) < SLACK
