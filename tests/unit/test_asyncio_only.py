"""redlock_aio runs on asyncio (or uvloop) only: called from trio, directly or
through anyio's trio backend, each entry point raises a RedlockError that says
so, not asyncio's "no running event loop"."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from redlock_aio import AsyncRedlock, Lock, RedlockError

from .fakes import FakeClock, fake_nodes

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

trio = pytest.importorskip("trio")

ASYNCIO_ONLY = r"runs on asyncio \(or uvloop\) only: this runs on trio"


def make_redlock() -> AsyncRedlock:
    nodes = fake_nodes(3, FakeClock())
    return AsyncRedlock(nodes, ttl=10.0, restart_quarantine=0)


def run_in_trio(step: Callable[[], Awaitable[object]]) -> None:
    async def main() -> None:
        await step()

    trio.run(main)


def test_acquire_under_trio_says_asyncio_only() -> None:
    rl = make_redlock()
    with pytest.raises(RedlockError, match=ASYNCIO_ONLY):
        run_in_trio(lambda: rl.acquire("r"))


def test_entering_a_lock_under_trio_says_asyncio_only() -> None:
    rl = make_redlock()

    async def enter() -> None:
        async with rl.lock("r"):
            pytest.fail("entered")  # pragma: no cover

    with pytest.raises(RedlockError, match=ASYNCIO_ONLY):
        run_in_trio(enter)


def test_extend_and_release_under_trio_say_asyncio_only() -> None:
    rl = make_redlock()

    async def acquire() -> Lock:
        return await rl.acquire("r")

    loop = asyncio.new_event_loop()
    try:
        lock = loop.run_until_complete(acquire())
        with pytest.raises(RedlockError, match=ASYNCIO_ONLY):
            run_in_trio(lock.extend)
        with pytest.raises(RedlockError, match=ASYNCIO_ONLY):
            run_in_trio(lock.release)
        loop.run_until_complete(rl.aclose())
    finally:
        loop.close()


def test_aclose_under_trio_after_use_says_asyncio_only() -> None:
    rl = make_redlock()

    async def acquire() -> None:
        await rl.acquire("r")

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(acquire())
        try:
            with pytest.raises(RedlockError, match=ASYNCIO_ONLY):
                run_in_trio(rl.aclose)
        finally:
            loop.run_until_complete(rl.aclose())
    finally:
        loop.close()


def test_under_anyio_trio_backend_says_asyncio_only() -> None:
    anyio = pytest.importorskip("anyio")
    rl = make_redlock()

    async def acquire() -> None:
        await rl.acquire("r")

    with pytest.raises(RedlockError, match=ASYNCIO_ONLY):
        anyio.run(acquire, backend="trio")


def test_lock_outside_any_loop_does_not_raise() -> None:
    """lock() outside a loop (sniffio imported, no library running) is checked
    only when entered."""
    rl = make_redlock()
    rl.lock("r")
