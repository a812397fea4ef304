"""Least privilege: the README's ACL is enough (see test_quarantine.py), and
each permission missing from it gives an error that names the command or key
pattern to add, never only a script's SHA."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from redlock_aio import AsyncRedlock, RedlockError
from redlock_aio._scripts import MARKER

from .helpers import mark_intact
from .test_quarantine import LOCKER_ACL

if TYPE_CHECKING:
    from redlock_aio.testing import LocalCluster

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("missing", "step", "fix"),
    [
        ("+set", "acquire", "may not run SET in the lock scripts: add +set"),
        ("+get", "acquire", "may not run GET in the lock scripts: add +get"),
        ("+time", "acquire", "may not run TIME in the lock scripts: add +time"),
        ("+evalsha", "acquire", "may not run EVALSHA: add +evalsha"),
        ("+script|load", "acquire", "may not load it: add +script|load"),
        ("~locks:*", "acquire", "key pattern must cover the lock keys"),
        ("+pexpire", "extend", "may not run PEXPIRE in the lock scripts: add +pexpire"),
        ("+del", "release", "may not run DEL in the lock scripts: add +del"),
    ],
)
async def test_a_missing_permission_names_its_fix(
    cluster: LocalCluster, missing: str, step: str, fix: str
) -> None:
    for server in cluster:
        server.command("ACL", "SETUSER", "locker", "reset")
        server.command(
            "ACL", "SETUSER", "locker", *(a for a in LOCKER_ACL if a != missing)
        )
        server.command("SCRIPT", "FLUSH")
        if missing == "+time":  # TIME runs only for a node without its marker
            server.command("DEL", MARKER)
        else:
            server.command("SET", b"locks:" + MARKER, "0")
    urls = [u.replace("redis://", "redis://locker:pw@") for u in cluster.urls]
    try:
        async with AsyncRedlock(urls, ttl=5.0, key_prefix="locks:") as rl:
            with pytest.raises(RedlockError) as info:
                lock = await rl.acquire("r", blocking=False)
                if step == "extend":
                    await lock.extend()
                await lock.release()
            assert fix in str(info.value)
            assert "README: Least privilege" in str(info.value)
    finally:
        for server in cluster:
            server.command("ACL", "DELUSER", "locker")
            server.command("DEL", "locks:r", b"locks:" + MARKER)
        mark_intact(cluster)
