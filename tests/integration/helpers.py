"""Helpers shared by the integration tests: what the nodes hold, waiting for a
lock's requests still in flight, and one node's operations through
``Node.submit``."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from redlock_aio import Vote, _commands
from redlock_aio._scripts import MARKER

if TYPE_CHECKING:
    from redlock_aio import Lock, Node
    from redlock_aio._commands import Command
    from redlock_aio.testing import LocalCluster


async def settle(lock: Lock) -> list[bool | None]:
    """Wait for the lock's requests still in flight (the quorum decides before
    the slowest node answers); each node's last answer: True for yes, False for
    no, None for a failure or a timeout."""
    await lock._settled()
    answers = {Vote.YES: True, Vote.QUARANTINED: True, Vote.NO: False}
    return [answers.get(o.vote) for o in lock.outcomes]


def keys(cluster: LocalCluster, key: str | bytes = "r") -> list[object]:
    """What each node holds at ``key`` (None for a node that is down)."""
    return [s.command("GET", key) if s.running else None for s in cluster]


async def no_key(
    cluster: LocalCluster, key: str | bytes = "r", within: float = 5.0
) -> bool:
    """No node holds ``key``, once the releases still going on in the background
    (to a node slower than the quorum; bounded by the per-node timeout) are over."""
    deadline = time.monotonic() + within
    while any(v is not None for v in keys(cluster, key)):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def mark_intact(cluster: LocalCluster, prefix: bytes = b"") -> None:
    """Set every node's marker key, as ``AsyncRedlock.init_nodes`` does: nodes
    the suite started hold every lock there is, so the restart quarantine
    does not apply to them."""
    for server in cluster:
        if server.running:
            server.command("SET", prefix + MARKER, "0")


def lock_keys(cluster: LocalCluster) -> list[int]:
    """Per node, how many keys it holds besides marker keys (0 if it is down)."""
    counts = []
    for server in cluster:
        names = server.command("KEYS", "*") if server.running else []
        assert isinstance(names, list)
        counts.append(sum(not k.endswith(MARKER) for k in names))
    return counts


# -- one node's operations, through Node.submit -----------------------------------


async def ask(node: Node, command: Command, timeout: float = 5.0) -> object:
    """Submit ``command`` to ``node`` and decode its reply (its vote)."""
    return command.decode(await node.submit(command, timeout=timeout))


async def set_nx(node: Node, key: bytes, token: bytes, ttl_ms: int) -> bool:
    return await ask(node, _commands.set_nx(key, token, ttl_ms)) is True


async def release(node: Node, key: bytes, token: bytes, *, notify: bool = True) -> bool:
    return await ask(node, _commands.release(key, token, notify=notify)) is True


async def extend(node: Node, key: bytes, token: bytes, ttl_ms: int) -> bool:
    return await ask(node, _commands.extend(key, token, ttl_ms)) is True


async def extend_many(node: Node, items: list[tuple[bytes, bytes, int]]) -> object:
    return await ask(node, _commands.extend_many(items))
