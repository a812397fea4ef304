"""The same round trip against Redis nodes in Docker containers (testcontainers),
for machines where a Docker engine answers; skipped cleanly elsewhere."""

from __future__ import annotations

import contextlib

import pytest

from redlock_aio import AsyncRedlock
from redlock_aio.testing import docker_available

pytestmark = pytest.mark.docker


async def test_round_trip_on_docker_nodes() -> None:
    if not docker_available():
        pytest.skip("no Docker engine answers: testcontainers path not exercised")
    from testcontainers.redis import RedisContainer

    with contextlib.ExitStack() as stack:
        containers = [
            stack.enter_context(RedisContainer("redis:7-alpine")) for _ in range(3)
        ]
        urls = [
            f"redis://{c.get_container_host_ip()}:{c.get_exposed_port(6379)}"
            for c in containers
        ]
        async with AsyncRedlock(urls, ttl=5.0) as rl:
            async with rl.lock("docker:r") as lock:
                assert lock.held
            assert lock.released
