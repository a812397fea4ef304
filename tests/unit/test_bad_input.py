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
