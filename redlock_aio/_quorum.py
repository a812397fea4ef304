"""Await-free Redlock arithmetic: quorum size, clock drift, validity, vote tally.

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


def decide(n: int, needed: int, yes: int, against: int) -> Decision:
    """The outcome of a vote of ``n`` nodes so far: reached once ``needed``
    said yes, failed once so many voted otherwise (no, error, timeout) that
    ``needed`` is out of reach, else pending."""
    if yes >= needed:
        return Decision.REACHED
    if n - against < needed:
        return Decision.FAILED
    return Decision.PENDING


class Tally:
    """Counts votes as they arrive and says when the outcome is decided.

    The outcome is decided as soon as a quorum voted yes, or as soon as so many
    voted otherwise that a quorum is out of reach: waiting for the remaining
    nodes could not change it.
    """

    __slots__ = ("n", "needed", "no", "yes")

    def __init__(self, n: int, needed: int | None = None) -> None:
        self.n = n
        self.needed = quorum(n) if needed is None else needed
        self.yes = 0
        self.no = 0

    def add(self, ok: bool) -> Decision:
        if ok:
            self.yes += 1
        else:
            self.no += 1
        return self.decision

    @property
    def decision(self) -> Decision:
        return decide(self.n, self.needed, self.yes, self.no)
