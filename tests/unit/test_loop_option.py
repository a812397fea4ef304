"""``--loop`` (tests/conftest.py): every async test and async fixture runs on
the loop it names."""

from __future__ import annotations

import asyncio

import pytest


def _is_on(loop: asyncio.AbstractEventLoop, name: str) -> bool:
    is_uvloop = type(loop).__module__.startswith("uvloop")
    return is_uvloop if name == "uvloop" else not is_uvloop


@pytest.fixture
async def fixture_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


async def test_the_test_and_its_async_fixture_run_on_the_chosen_loop(
    request: pytest.FixtureRequest, fixture_loop: asyncio.AbstractEventLoop
) -> None:
    name = request.config.getoption("--loop")
    loop = asyncio.get_running_loop()
    assert _is_on(loop, name), type(loop)
    assert fixture_loop is loop
