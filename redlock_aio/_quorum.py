"""The pure rules of Redlock: quorum size, clock drift, validity, the decision of
a vote, the verdict on an extension, and the retry backoff.

Kept free of I/O so that every rule of the algorithm can be tested with plain
numbers and an injected clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: Redis expires keys with millisecond precision, and a key may live up to 1 ms
#: less than asked; 2 ms covers that and the rounding of the TTL to milliseconds.
DRIFT_FLOOR = 0.002


def quorum(n: int) -> int:
    """The majority of ``n`` nodes: ``n // 2 + 1``."""
    return n // 2 + 1


def clock_drift(ttl: float, drift_factor: float) -> float:
    """Seconds to subtract from the validity for clock drift between nodes."""
    return ttl * drift_factor + DRIFT_FLOOR


def validity_deadline(start: float, ttl: float, drift_factor: float) -> float:
    """The monotonic time until which a lock granted on keys set after ``start``
    is known to be held: ``start + ttl - drift``.

    ``start`` is taken *before* the first request is sent, so the time the
    requests spent in flight is counted against the validity
    (``validity = ttl - elapsed - drift``).
    """
    return start + ttl - clock_drift(ttl, drift_factor)


class Vote(enum.Enum):
    """One node's answer to one request."""

    YES = "yes"
    NO = "no"
    ERROR = "error"
    TIMEOUT = "timeout"
    #: said yes, but restarted too recently for its yes to count
    QUARANTINED = "quarantined"
    #: not yet answered when the outcome was decided
    PENDING = "pending"


@dataclass(frozen=True)
class NodeOutcome:
    """What one node answered to one request of one attempt.

    :ivar node: the node's description (host and port; never a password).
    :ivar vote: yes, no (the key belongs to someone else or is gone), error or
        timeout.
    :ivar error: the :class:`NodeError` for an error or a timeout.
    """

    node: str
    vote: Vote
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.vote is Vote.YES

    def __str__(self) -> str:
        if self.error is None:
            return f"{self.node}: {self.vote.value}"
        detail = getattr(self.error, "detail", None)
        if detail is None:
            cause = self.error.__cause__ or self.error
            detail = f"{type(cause).__name__}: {cause}"
        return f"{self.node}: {self.vote.value} ({detail})"


class Decision(enum.Enum):
    PENDING = "pending"
    REACHED = "reached"
    FAILED = "failed"


# Members as module constants: an enum attribute lookup costs about 45 ns on
# Python 3.11, and decide() runs for every reply.
_REACHED = Decision.REACHED
_FAILED = Decision.FAILED
_PENDING = Decision.PENDING


def decide(n: int, needed: int, yes: int, against: int) -> Decision:
    """The outcome of a vote of ``n`` nodes so far: reached once ``needed``
    said yes, failed once so many voted otherwise (no, error, timeout) that
    ``needed`` is out of reach, else pending."""
    if yes >= needed:
        return _REACHED
    if n - against < needed:
        return _FAILED
    return _PENDING


class Quarantined:
    """A yes from a node in its restart quarantine: the key was set, but the
    node may have lost a lock that is still held, so the yes does not count.

    :ivar wait: seconds of quarantine left, on the node's clock.
    :ivar fresh: the node's marker was missing until this request: it has
        just been found to have lost its data (or to be new).
    """

    __slots__ = ("fresh", "wait")

    def __init__(self, wait: float, fresh: bool) -> None:
        self.wait = wait
        self.fresh = fresh

    def reason(self) -> str:
        return (
            "it lost its data or is new (no marker key), so it may have "
            "forgotten a lock that is still held: its yes counts in "
            f"{self.wait:.1f} s (restart_quarantine)"
        )


class Renewal(enum.Enum):
    """The verdict on one decided extension of one lock."""

    #: a quorum extended it in time: its validity is the new one
    RENEWED = "renewed"
    #: it is gone: its validity ran out first, or a quorum no longer holds it
    LOST = "lost"
    #: no quorum this time (errors, timeouts); it stays valid until its deadline
    MISSED = "missed"


def renewal(
    *,
    n: int,
    needed: int,
    yes: int,
    no: int,
    now: float,
    old_deadline: float,
    new_deadline: float,
) -> tuple[Renewal, str]:
    """The rule of every extension, by hand (``Lock.extend``) or in the
    background: renewed only with a quorum of yes before both the current
    deadline and the new one; lost once the current deadline passed, or a
    quorum said no (the key is gone or someone else's); else missed. No answer
    after the current deadline can count: by then another client may
    legitimately hold the lock. The text says why, for lost and missed."""
    if yes >= needed and now < old_deadline and now < new_deadline:
        return Renewal.RENEWED, ""
    if now >= old_deadline:
        return (
            Renewal.LOST,
            "its validity ran out before a quorum confirmed the extension",
        )
    if no >= needed:
        return Renewal.LOST, f"the key is gone or taken on {no} of {n} nodes"
    return Renewal.MISSED, f"{yes} of {n} nodes extended it, {needed} needed"


def backoff(
    attempt: int, delay: float, delay_max: float, jitter: float, rand: float
) -> float:
    """The delay before attempt ``attempt + 1``: ``delay`` doubled per attempt,
    at most ``delay_max``, with up to ``jitter`` of it taken off at random
    (``rand`` in [0, 1)), so that contenders do not retry in lockstep."""
    base = min(delay_max, delay * 2.0 ** min(attempt - 1, 30))
    return base * (1.0 - jitter * rand)
