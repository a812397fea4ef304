"""A mutual-exclusion checker: who held which resource when, and did any two
validity windows overlap.

Each holder records a :class:`Holding` per acquisition: the time ``acquire``
returned, the lock's final ``valid_until`` and the time the block ended, all on
:func:`time.monotonic`, which on Linux is one clock for every process of the
machine, so records from several processes can be checked together. A holder's
window is ``[granted, min(valid_until, ended)]``: the time it believed it held
the lock. Two windows of different holders of one resource that overlap are a
violation of mutual exclusion.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .._lock import Lock


def resource_name(lock: Lock) -> str:
    """The lock's resource as recorded: the str itself, bytes as hex."""
    resource = lock.resource
    return resource if isinstance(resource, str) else resource.hex()


@dataclass(frozen=True)
class Holding:
    """One acquisition, as its holder saw it (monotonic seconds)."""

    holder: str
    resource: str
    granted: float
    valid_until: float
    ended: float
    lost: bool = False
    #: The lock's token (hex): tells two acquisitions of one holder apart, and
    #: matches the holding to the writes it made (see ``StoreChecker``).
    token: str = ""

    @property
    def window_end(self) -> float:
        """The end of the time the holder believed it held the lock."""
        return min(self.valid_until, self.ended)


@dataclass(frozen=True)
class Violation:
    """Two holders whose windows on one resource overlapped."""

    first: Holding
    second: Holding

    @property
    def overlap(self) -> float:
        return min(self.first.window_end, self.second.window_end) - max(
            self.first.granted, self.second.granted
        )

    def __str__(self) -> str:
        a, b = self.first, self.second
        return (
            f"{a.resource!r}: {a.holder} [{a.granted:.6f}, {a.window_end:.6f}] and "
            f"{b.holder} [{b.granted:.6f}, {b.window_end:.6f}] overlap by "
            f"{self.overlap * 1000:.3f} ms"
        )


class MutexChecker:
    """Collects :class:`Holding` records and finds overlapping windows.

    In one process, wrap each critical section::

        async with redlock.lock("r") as lock:
            granted = checker.granted()
            ...
        checker.record("worker-1", lock, granted)

    Across processes, each writes :meth:`dump` and the parent :meth:`load` s
    them all before :meth:`violations`.
    """

    def __init__(self, holdings: Iterable[Holding] = ()) -> None:
        self.holdings: list[Holding] = list(holdings)

    @staticmethod
    def granted() -> float:
        """The time to record as the grant: now, right after acquire returned."""
        return time.monotonic()

    def record(self, holder: str, lock: Lock, granted: float) -> Holding:
        """Record ``lock`` as held by ``holder`` from ``granted`` until now."""
        holding = Holding(
            holder=holder,
            resource=resource_name(lock),
            granted=granted,
            valid_until=lock.valid_until,
            ended=time.monotonic(),
            lost=lock.lost,
            token=lock.token.hex(),
        )
        self.holdings.append(holding)
        return holding

    def violations(self) -> list[Violation]:
        """Every pair of different holders whose windows on one resource
        overlapped (empty when mutual exclusion held)."""
        found: list[Violation] = []
        by_resource: dict[str, list[Holding]] = defaultdict(list)
        for h in self.holdings:
            by_resource[h.resource].append(h)
        for holdings in by_resource.values():
            holdings.sort(key=lambda h: h.granted)
            # Sweep: keep the holdings whose window is still open.
            open_: list[Holding] = []
            for h in holdings:
                open_ = [o for o in open_ if o.window_end > h.granted]
                found.extend(Violation(o, h) for o in open_ if o.holder != h.holder)
                open_.append(h)
        return found

    def dump(self, path: str) -> None:
        """Write the records as JSON lines."""
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(asdict(h)) + "\n" for h in self.holdings)

    @classmethod
    def load(cls, *paths: str) -> MutexChecker:
        """Merge records written by :meth:`dump` in several processes."""
        holdings: list[Holding] = []
        for path in paths:
            with open(path, encoding="utf-8") as f:
                holdings.extend(
                    Holding(**json.loads(line)) for line in f if line.strip()
                )
        return cls(holdings)
