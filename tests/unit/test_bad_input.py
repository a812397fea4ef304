"""Every bad input gets a typed error whose message says what to fix, before
any I/O (the URLs below point at ports nothing listens on)."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest

from redlock_aio import (
    AsyncRedlock,
    ConfigurationError,
    ConfigurationTypeError,
    MuxNode,
    RedlockClosed,
)

URLS = [f"redis://127.0.0.1:{p}" for p in (1, 2, 3)]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"ttl": 0}, ConfigurationError, "ttl must be > 0"),
        ({"ttl": -1.0}, ConfigurationError, "ttl must be > 0"),
        ({"ttl": math.nan}, ConfigurationError, "ttl must be finite"),
        ({"ttl": math.inf}, ConfigurationError, "ttl must be finite"),
        ({"ttl": "10"}, ConfigurationTypeError, "ttl must be a number"),
        ({"ttl": True}, ConfigurationTypeError, "ttl must be a number"),
        ({"ttl": 0.002}, ConfigurationError, "leaves no validity"),
        ({"node_timeout": 0}, ConfigurationError, "node_timeout must be > 0"),
        ({"drift_factor": 0.6}, ConfigurationError, "drift_factor must be in"),
        ({"drift_factor": -0.1}, ConfigurationError, "drift_factor must be in"),
        ({"retry_count": -1}, ConfigurationError, "retry_count must be >= 0"),
        ({"retry_count": 1.5}, ConfigurationTypeError, "retry_count must be an int"),
        ({"retry_count": True}, ConfigurationTypeError, "retry_count must be an int"),
        ({"retry_delay": -0.1}, ConfigurationError, "retry_delay must be >= 0"),
        (
            {"retry_delay": 2.0, "retry_delay_max": 1.0},
            ConfigurationError,
            "retry_delay_max",
        ),
        ({"retry_jitter": 2.0}, ConfigurationError, "retry_jitter must be in"),
        ({"retry_jitter": -1}, ConfigurationError, "retry_jitter must be >= 0"),
        ({"key_prefix": 5}, ConfigurationTypeError, "key_prefix must be str or bytes"),
    ],
)
def test_bad_settings(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        AsyncRedlock(URLS, **kwargs)


@pytest.mark.parametrize(
    ("nodes", "error", "message"),
    [
        ([], ConfigurationError, "no nodes given"),
        ("redis://127.0.0.1:1", ConfigurationTypeError, "wrap it in a list"),
        (42, ConfigurationTypeError, "must be a list"),
        ([42], ConfigurationTypeError, "a node must be a redis:// URL"),
        (["http://127.0.0.1:1"], ConfigurationError, "scheme must be one of"),
        (["redis://"], ConfigurationError, "no host"),
        (["redis://127.0.0.1:notaport"], ConfigurationError, "invalid node URL"),
        (["redis://127.0.0.1:1/x"], ConfigurationError, "invalid node URL"),
        (["unix://"], ConfigurationError, "needs a socket path"),
        # Hosts no resolver takes: refused here, not failing at the first acquire.
        (["redis://exa mple:6379"], ConfigurationError, "neither an IP address"),
        (["redis://a%20b:6379"], ConfigurationError, "neither an IP address"),
        (["redis://node..1:6379"], ConfigurationError, "neither an IP address"),
        (["redis://-node-:6379"], ConfigurationError, "neither an IP address"),
        (["redis://no%00de:6379"], ConfigurationError, "neither an IP address"),
        (
            ["redis://127.0.0.1:1", "redis://127.0.0.1:1/0"],
            ConfigurationError,
            "given twice",
        ),
        (
            ["redis://127.0.0.1:1", "redis://:pw@127.0.0.1:1"],
            ConfigurationError,
            "given twice",
        ),
    ],
)
def test_bad_nodes(nodes: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        AsyncRedlock(nodes)


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "10.0.0.1",
        "[::1]",
        "[fe80::1%25eth0]",
        "redis_1",
        "node-1.example.com.",
        "bücher.example",
    ],
)
def test_every_kind_of_host_is_accepted(host: str) -> None:
    rl = AsyncRedlock([f"redis://{host}:7001", *URLS[1:]])
    assert rl.nodes[0].name.endswith(":7001")


def test_a_mux_node_refuses_a_host_that_is_no_host() -> None:
    with pytest.raises(ConfigurationError, match="MuxNode: host 'a b' is neither"):
        MuxNode(host="a b")


def test_a_password_never_appears_in_an_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        AsyncRedlock(["redis://user:s3cret@127.0.0.1:notaport"])
    assert "s3cret" not in str(info.value)
    rl = AsyncRedlock(["redis://:s3cret@127.0.0.1:1"])
    assert "s3cret" not in repr(rl)
    assert "s3cret" not in repr(rl.nodes[0])


@pytest.mark.parametrize(
    ("resource", "error", "message"),
    [
        ("", ConfigurationError, "resource must not be empty"),
        (b"", ConfigurationError, "resource must not be empty"),
        (None, ConfigurationTypeError, "resource must be str or bytes"),
        (42, ConfigurationTypeError, "resource must be str or bytes"),
    ],
)
async def test_bad_resource(
    resource: Any, error: type[Exception], message: str
) -> None:
    async with AsyncRedlock(URLS) as rl:
        with pytest.raises(error, match=message):
            await rl.acquire(resource)
        with pytest.raises(error, match=message):
            rl.lock(resource)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl": 0}, "ttl must be > 0"),
        ({"ttl": 0.001}, "leaves no validity"),
        ({"timeout": -1}, "timeout must be >= 0"),
        ({"timeout": "soon"}, "timeout must be a number"),
    ],
)
async def test_bad_acquire_arguments(kwargs: dict[str, Any], message: str) -> None:
    async with AsyncRedlock(URLS) as rl:
        with pytest.raises(ConfigurationError, match=message):
            await rl.acquire("r", **kwargs)
        with pytest.raises(ConfigurationError, match=message):
            rl.lock("r", **kwargs)


async def test_use_after_close_is_an_error() -> None:
    rl = AsyncRedlock(URLS)
    await rl.aclose()
    with pytest.raises(RedlockClosed, match="closed"):
        await rl.acquire("r")
    await rl.aclose()  # idempotent


@pytest.mark.parametrize("n", [1, 2, 4])
def test_weak_node_counts_are_allowed_with_a_warning(
    n: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="redlock_aio"):
        AsyncRedlock([f"redis://127.0.0.1:{p}" for p in range(1, n + 1)])
    assert "odd number >= 3" in caplog.text


def test_three_nodes_do_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="redlock_aio"):
        AsyncRedlock(URLS)
    assert caplog.text == ""


def test_bytes_and_non_utf8_resources_are_keys_as_given() -> None:
    from redlock_aio._config import key_for

    assert key_for(b"p:", b"\xff\x00") == b"p:\xff\x00"
    assert key_for(b"", "é") == "é".encode()


# -- holes found by the argument fuzz (tests/unit/test_fuzz_arguments.py) ------------

HUGE = 10**309  # an int too large for a float
DURATIONS = [
    "ttl",
    "node_timeout",
    "drift_factor",
    "retry_delay",
    "retry_delay_max",
    "retry_jitter",
    "restart_quarantine",
]


@pytest.mark.parametrize("name", DURATIONS)
@pytest.mark.parametrize(
    "value", [HUGE, -HUGE, 10**5000], ids=["1e309", "-1e309", "1e5000"]
)
def test_an_int_too_large_for_a_float_is_not_finite(name: str, value: int) -> None:
    kwargs: dict[str, Any] = {name: value}
    with pytest.raises(ConfigurationError, match=f"{name} must be finite"):
        AsyncRedlock(URLS, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl": 1e17}, "ttl must be at most 1,000,000,000 seconds"),
        ({"ttl": 10**9 + 1}, "ttl must be at most"),
        ({"node_timeout": 1e10}, "node_timeout must be at most"),
        ({"retry_delay_max": 1e10}, "retry_delay_max must be at most"),
        ({"retry_delay": 1e10, "retry_delay_max": 1e10}, "retry_delay must be at"),
        ({"restart_quarantine": 1e10}, "restart_quarantine must be at most"),
    ],
)
def test_durations_have_an_upper_bound(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        AsyncRedlock(URLS, **kwargs)


def test_the_largest_ttl_allowed_works() -> None:
    rl = AsyncRedlock(URLS, ttl=10**9, restart_quarantine=10**9)
    assert rl.settings.terms(rl.settings.ttl).px == 10**12


def test_a_key_prefix_is_encoded_like_a_resource() -> None:
    rl = AsyncRedlock(URLS, key_prefix="\ud800")
    assert rl.settings.key_prefix == "\ud800".encode("utf-8", "surrogatepass")
    rl = AsyncRedlock(URLS, key_prefix=bytearray(b"p:"))  # type: ignore[arg-type]
    assert rl.settings.key_prefix == b"p:"


@pytest.mark.parametrize("clock", [5.0, 0, "monotonic", False])
def test_a_clock_must_be_callable(clock: object) -> None:
    with pytest.raises(ConfigurationTypeError, match="clock must be a function"):
        AsyncRedlock(URLS, clock=clock)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1:0", "port 0 is no server's port"),
        ("redis://127.0.0.1:00", "port 0 is no server's port"),
        ("redis://127.0.0.1:1/-1", "db must be a whole number from 0"),
        ("redis://127.0.0.1:1?db=-1", "db must be a whole number from 0"),
        ("unix:///tmp/redis.sock?db=-1", "db must be a whole number from 0"),
        ("redis://127.0.0.1:1?db=2147483648", "db must be a whole number from 0"),
        ("redis://127.0.0.1:1/0?db=3", "the db is given more than once, as 0 and 3"),
        ("redis://127.0.0.1:1?db=1&db=2", "the db is given more than once"),
        ("redis://:\ud800@127.0.0.1:1", "lone surrogate"),
        ("redis://127.0.0.1:1?client_name=\ud800", "lone surrogate"),
        ("unix:///tmp/\ud800", "lone surrogate"),
        ("redis://127.0.0.1:1?client_name=a%20b", "client_name must be printable"),
    ],
)
def test_bad_node_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        AsyncRedlock([url])


@pytest.mark.parametrize(
    "urls",
    [
        ["redis://localhost:1", "redis://127.0.0.1:1"],
        ["redis://127.0.0.1:1", "redis://[::1]:1"],
        ["redis://LOCALHOST:1/2", "redis://[::1]:1?db=2"],
        ["redis://Example.com:1", "redis://example.com:1"],
    ],
)
def test_one_server_under_two_names_is_given_twice(urls: list[str]) -> None:
    with pytest.raises(ConfigurationError, match="given twice"):
        AsyncRedlock(urls)


def test_a_mux_node_on_localhost_and_a_url_on_127_0_0_1_are_one_server() -> None:
    from redlock_aio import MuxNode

    with pytest.raises(ConfigurationError, match="given twice"):
        AsyncRedlock([MuxNode(host="localhost", port=1), "redis://127.0.0.1:1"])


@pytest.mark.parametrize(
    "urls",
    [
        ["redis://127.0.0.1:1", "redis://127.0.0.2:1"],
        ["redis://localhost:1", "redis://localhost:1/1"],
        ["redis://localhost:1", "redis://localhost:2"],
    ],
)
def test_other_servers_are_distinct(urls: list[str]) -> None:
    assert len(AsyncRedlock(urls).nodes) == len(urls)


@pytest.mark.parametrize(
    ("url", "port", "db"),
    [
        ("redis://127.0.0.1", 6379, 0),
        ("redis://127.0.0.1:7/3?db=3", 7, 3),
        ("redis://127.0.0.1:7?db=%35", 7, 5),
        ("redis://127.0.0.1:7//4/", 7, 4),
        ("rediss://127.0.0.1:7/2?ssl_cert_reqs=none", 7, 2),
        ("unix:///tmp/redis.sock?db=6", 6379, 6),
    ],
)
def test_describe_url_and_mux_node_agree(url: str, port: int, db: int) -> None:
    from redlock_aio import MuxNode
    from redlock_aio._url import describe_url

    name, identity = describe_url(url)
    node = MuxNode.from_url(url)
    assert (node.name, node.identity) == (name, identity)
    assert identity[-1] == db  # type: ignore[index]
    assert node._port == port
    selects = [setup[0] for setup in node._setup if setup[0].startswith("SELECT")]
    assert selects == ([f"SELECT {db}"] if db else [])


def test_a_password_in_the_query_never_appears_in_an_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        AsyncRedlock(["redis://127.0.0.1:0?password=s3cret"])
    assert "s3cret" not in str(info.value)
    assert "password=***" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl": HUGE}, "ttl must be finite"),
        ({"ttl": 1e17}, "ttl must be at most"),
        ({"timeout": HUGE}, "timeout must be finite"),
        ({"timeout": 1e10}, "timeout must be at most"),
        ({"blocking": "no"}, "blocking must be True or False"),
        ({"blocking": 0}, "blocking must be True or False"),
        ({"blocking": None}, "blocking must be True or False"),
    ],
)
async def test_bad_acquire_and_lock_arguments(
    kwargs: dict[str, Any], message: str
) -> None:
    async with AsyncRedlock(URLS) as rl:
        with pytest.raises(ConfigurationError, match=message):
            await rl.acquire("r", **kwargs)
        with pytest.raises(ConfigurationError, match=message):
            rl.lock("r", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"auto_extend": "yes"}, "auto_extend must be True or False"),
        ({"cancel_on_lost": 1}, "cancel_on_lost must be True or False"),
        ({"on_lost": 5}, "on_lost must be a callable or None"),
        ({"on_lost": "print"}, "on_lost must be a callable or None"),
    ],
)
async def test_bad_lock_arguments(kwargs: dict[str, Any], message: str) -> None:
    async with AsyncRedlock(URLS) as rl:
        with pytest.raises(ConfigurationTypeError, match=message):
            rl.lock("r", **kwargs)


async def test_a_resource_too_large_to_show_is_still_a_type_error() -> None:
    async with AsyncRedlock(URLS) as rl:
        with pytest.raises(ConfigurationTypeError, match="resource must be str"):
            rl.lock(10**5000)  # type: ignore[arg-type]
