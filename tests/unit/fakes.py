"""A fake clock and the in-memory node for focused unit tests of the
algorithm. Integration tests use real redis-server processes instead."""

from __future__ import annotations

from dataclasses import dataclass

from redlock_aio.testing import InMemoryNode


@dataclass
class FakeClock:
    """A monotonic clock that moves only when told to."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


#: The test kit's in-memory node, on a fake clock here.
FakeNode = InMemoryNode


def fake_nodes(n: int, clock: FakeClock, **kwargs: object) -> list[FakeNode]:
    return [FakeNode(f"fake{i}", clock, **kwargs) for i in range(n)]  # type: ignore[arg-type]
