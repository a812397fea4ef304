"""Checks of every argument, done before any I/O, with messages that say what to fix."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import final

from ._errors import ConfigurationError, ConfigurationTypeError
from ._quorum import DRIFT_FLOOR, clock_drift, validity_deadline

#: Default lock lifetime in seconds.
DEFAULT_TTL = 10.0
#: Default drift factor: 1% of the TTL, plus 2 ms.
DEFAULT_DRIFT_FACTOR = 0.01
#: Default per-node timeout, as a fraction of the TTL (redsync uses the same idea),
#: capped: a lock held for days should not wait minutes on a dead node.
NODE_TIMEOUT_FACTOR = 0.05
NODE_TIMEOUT_CAP = 1.0
#: The longest duration any argument may give, in seconds (about 31.7 years).
#: A TTL in ms stays far below what every Redis 6.2+ / Valkey accepts for PX and
#: PEXPIRE (LLONG_MAX - now), and every timer far inside what event loops take.
MAX_SECONDS = 10**9


#: Auto-extension extends a lock when this share of its TTL has passed since
#: its validity was last set.
EXTEND_EVERY = 1 / 3
#: After an extension without quorum, auto-extension retries after this share
#: of the TTL, at most RETRY_MAX seconds.
RETRY_SHARE = 0.05
RETRY_MAX = 0.25
#: How many distinct TTLs get their terms remembered.
TERMS_CACHED = 64


@final
class LeaseTerms:
    """What a lock of one TTL is made of, worked out once per distinct TTL.

    :ivar ttl: seconds.
    :ivar px: the TTL in whole milliseconds, for PX / PEXPIRE.
    :ivar node_timeout: seconds each node gets per request.
    :ivar drift: seconds of validity given up for clock drift.
    :ivar validity: seconds a grant or an extension is valid, counted from
        before its first request went out (``ttl - drift``).
    :ivar due: seconds from an extension's start to the next (auto-extension).
    :ivar gap: seconds before auto-extension retries a missed extension.
    """

    __slots__ = ("drift", "due", "gap", "node_timeout", "px", "ttl", "validity")

    def __init__(self, ttl: float, node_timeout: float, drift_factor: float) -> None:
        self.ttl = ttl
        self.px = ttl_ms(ttl)
        self.node_timeout = node_timeout
        self.drift = clock_drift(ttl, drift_factor)
        self.validity = validity_deadline(0.0, ttl, drift_factor)
        self.due = ttl * EXTEND_EVERY
        self.gap = min(ttl * RETRY_SHARE, RETRY_MAX)

    def valid_until(self, start: float) -> float:
        """Until when a grant or extension whose first request went out after
        ``start`` is known held (:func:`~._quorum.validity_deadline`)."""
        return start + self.validity


@dataclass(frozen=True)
class Settings:
    """Validated settings of one :class:`AsyncRedlock`. Durations in seconds."""

    ttl: float = DEFAULT_TTL
    node_timeout: float | None = None
    drift_factor: float = DEFAULT_DRIFT_FACTOR
    retry_count: int | None = None
    retry_delay: float = 0.05
    retry_delay_max: float = 1.0
    retry_jitter: float = 0.5
    key_prefix: bytes = b""
    restart_quarantine: float | None = None

    def __post_init__(self) -> None:
        factor = self.drift_factor
        number("drift_factor", factor)
        if not 0 <= factor < 0.5:
            raise ConfigurationError(
                f"drift_factor must be in [0, 0.5), got {factor!r}: it is the share of "
                "the TTL assumed lost to clock drift (default 0.01)"
            )
        check_ttl(self.ttl, factor)
        if self.node_timeout is not None:
            positive("node_timeout", self.node_timeout)
        if self.retry_count is not None:
            if isinstance(self.retry_count, bool) or not isinstance(
                self.retry_count, int
            ):
                raise ConfigurationTypeError(
                    f"retry_count must be an int or None, got {self.retry_count!r}"
                )
            if self.retry_count < 0:
                raise ConfigurationError(
                    f"retry_count must be >= 0 (or None for no limit), "
                    f"got {self.retry_count}"
                )
        if self.restart_quarantine is not None:
            non_negative("restart_quarantine", self.restart_quarantine)
        non_negative("retry_delay", self.retry_delay)
        non_negative("retry_delay_max", self.retry_delay_max)
        if self.retry_delay_max < self.retry_delay:
            raise ConfigurationError(
                f"retry_delay_max ({self.retry_delay_max}) must be >= retry_delay "
                f"({self.retry_delay})"
            )
        jitter = number("retry_jitter", self.retry_jitter)
        if jitter < 0:
            raise ConfigurationError(f"retry_jitter must be >= 0, got {jitter!r}")
        if jitter > 1:
            raise ConfigurationError(
                f"retry_jitter must be in [0, 1] (a share of each delay), "
                f"got {jitter!r}"
            )

    def terms(self, ttl: float) -> LeaseTerms:
        """What a lock of this (checked) TTL is made of."""
        return LeaseTerms(ttl, self.node_timeout_for(ttl), self.drift_factor)

    def node_timeout_for(self, ttl: float) -> float:
        """The per-node timeout for a lock of this TTL: the configured one, or a
        fraction of the TTL; never more than the TTL's validity budget."""
        budget = ttl - clock_drift(ttl, self.drift_factor)
        base = self.node_timeout
        if base is None:
            base = min(ttl * NODE_TIMEOUT_FACTOR, NODE_TIMEOUT_CAP)
        return min(base, budget)


class TermsCache:
    """The terms of every TTL a client uses: checked once, then remembered (up
    to :data:`TERMS_CACHED` TTLs), and the largest TTL used so far (the default
    restart quarantine)."""

    __slots__ = ("_cache", "default", "max_ttl", "settings")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.default = settings.terms(settings.ttl)
        self.max_ttl = settings.ttl
        self._cache: dict[object, LeaseTerms] = {}

    def get(self, ttl: object) -> LeaseTerms:
        """The terms of a lock of ``ttl`` seconds (None: the default TTL);
        :class:`ConfigurationError` if it is not a usable TTL."""
        if ttl is None:
            return self.default
        cache = self._cache
        # bool is an int: its type keeps True from passing as a cached 1.
        terms = cache.get(ttl) if type(ttl) in (float, int) else None
        if terms is None:
            ttl_s = check_ttl(ttl, self.settings.drift_factor)
            self.max_ttl = max(self.max_ttl, ttl_s)
            terms = self.settings.terms(ttl_s)
            if len(cache) < TERMS_CACHED:
                cache[ttl] = terms
        return terms


def number(name: str, value: object) -> float:
    """``value`` as a float: an int or float (not a bool) that is finite. An int
    too large for a float counts as infinite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationTypeError(
            f"{name} must be a number of seconds (int or float), got "
            f"{type(value).__name__} {short_repr(value)}"
        )
    try:
        v = float(value)
    except OverflowError:
        v = math.inf
    if not math.isfinite(v):
        raise ConfigurationError(f"{name} must be finite, got {short_repr(value)}")
    return v


def seconds(name: str, value: object) -> float:
    """A finite number of seconds of at most :data:`MAX_SECONDS`."""
    v = number(name, value)
    if v > MAX_SECONDS:
        raise ConfigurationError(
            f"{name} must be at most {MAX_SECONDS:,} seconds (about 31 years), "
            f"got {short_repr(value)}"
        )
    return v


def positive(name: str, value: object) -> float:
    return _in_range(name, value, zero_allowed=False)


def non_negative(name: str, value: object) -> float:
    return _in_range(name, value, zero_allowed=True)


def _in_range(name: str, value: object, *, zero_allowed: bool) -> float:
    """Seconds in [0, MAX_SECONDS], or (0, MAX_SECONDS] without zero."""
    v = seconds(name, value)
    if v < 0 or (v == 0 and not zero_allowed):
        sign = ">=" if zero_allowed else ">"
        raise ConfigurationError(
            f"{name} must be {sign} 0 seconds (and at most {MAX_SECONDS:,}), "
            f"got {short_repr(value)}"
        )
    return v


def flag(name: str, value: object) -> bool:
    """A bool argument: ``"no"`` or ``0`` must not silently mean yes or no."""
    if not isinstance(value, bool):
        raise ConfigurationTypeError(
            f"{name} must be True or False, got {type(value).__name__} {short_repr(value)}"
        )
    return value


def optional_callable(name: str, value: object) -> None:
    """A callback argument: None or something callable."""
    if value is not None and not callable(value):
        raise ConfigurationTypeError(
            f"{name} must be a callable or None, got {type(value).__name__} "
            f"{short_repr(value)}"
        )


def check_ttl(ttl: object, drift_factor: float) -> float:
    """A TTL in seconds that leaves a positive validity after the drift."""
    t = positive("ttl", ttl)
    if t - clock_drift(t, drift_factor) <= 0 or t < 0.001:
        smallest = (DRIFT_FLOOR / (1 - drift_factor)) * 1.5
        raise ConfigurationError(
            f"ttl={ttl!r} s leaves no validity after the clock-drift allowance "
            f"(ttl * {drift_factor} + {DRIFT_FLOOR * 1000:.0f} ms); use a ttl of at "
            f"least {smallest:.3f} s, and in practice much more than a round trip"
        )
    return t


def ttl_ms(ttl: float) -> int:
    """The TTL in whole milliseconds for PX / PEXPIRE (rounded up: never shorter
    on the server than the validity computed locally)."""
    return max(1, math.ceil(ttl * 1000))


def check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    return non_negative("timeout", timeout)


def short_repr(resource: object, limit: int = 80) -> str:
    """``repr(resource)`` cut to ``limit`` characters: a 1 MB resource must not
    make a 1 MB error message or log line."""
    try:
        text = repr(resource)
    except Exception:  # noqa: BLE001 (an int of over 4300 digits; any failing repr)
        return f"<{type(resource).__name__} that cannot be shown>"
    if len(text) <= limit:
        return text
    return f"{text[: limit - 20]}...({len(text)} chars)"


def key_for(prefix: bytes, resource: object) -> bytes:
    """The Redis key of ``resource``: the prefix followed by its bytes (str is
    UTF-8 encoded; bytes are used as they are)."""
    if isinstance(resource, str):
        if not resource:
            raise ConfigurationError("resource must not be empty")
        return prefix + resource.encode("utf-8", "surrogatepass")
    if isinstance(resource, (bytes, bytearray, memoryview)):
        raw = bytes(resource)
        if not raw:
            raise ConfigurationError("resource must not be empty")
        return prefix + raw
    raise ConfigurationTypeError(
        f"resource must be str or bytes, got {type(resource).__name__} {short_repr(resource)}"
    )


def check_prefix(prefix: object) -> bytes:
    """The key prefix as bytes, encoded like a resource (str as UTF-8 with lone
    surrogates passed through; bytes-like as given); it may be empty."""
    if isinstance(prefix, str):
        return prefix.encode("utf-8", "surrogatepass")
    if isinstance(prefix, (bytes, bytearray, memoryview)):
        return bytes(prefix)
    raise ConfigurationTypeError(
        f"key_prefix must be str or bytes, got {type(prefix).__name__}"
    )


def check_clock(clock: object) -> None:
    """The ``clock`` argument: None (for :func:`time.monotonic`) or a function
    returning monotonic seconds; ``clock=0`` must not silently mean the default."""
    if clock is not None and not callable(clock):
        raise ConfigurationTypeError(
            f"clock must be a function returning monotonic seconds, or None for "
            f"time.monotonic; got {type(clock).__name__} {short_repr(clock)}"
        )


def check_node_list(nodes: object) -> Sequence[object]:
    if isinstance(nodes, (str, bytes)):
        raise ConfigurationTypeError(
            "nodes must be a list of node URLs or clients, got a single string; "
            "wrap it in a list: AsyncRedlock([url])"
        )
    if not isinstance(nodes, Sequence):
        try:
            nodes = list(nodes)  # type: ignore[call-overload]
        except TypeError:
            raise ConfigurationTypeError(
                f"nodes must be a list of node URLs or clients, got "
                f"{type(nodes).__name__}"
            ) from None
    assert isinstance(nodes, Sequence)
    if not nodes:
        raise ConfigurationError(
            "no nodes given: pass a list of redis:// URLs or redis.asyncio.Redis "
            "clients, ideally 3 or 5 independent servers"
        )
    return nodes
