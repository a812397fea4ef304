"""The mutual-exclusion checker finds overlapping windows, and only those."""

from __future__ import annotations

from typing import TYPE_CHECKING

from redlock_aio.testing import Holding, MutexChecker

if TYPE_CHECKING:
    from pathlib import Path


def h(holder: str, start: float, end: float, valid: float = 1e9) -> Holding:
    return Holding(holder, "r", start, valid, end)


def test_back_to_back_windows_are_fine() -> None:
    assert MutexChecker([h("a", 0, 1), h("b", 1, 2), h("a", 2, 3)]).violations() == []


def test_overlap_is_found() -> None:
    [v] = MutexChecker([h("a", 0, 2), h("b", 1, 3)]).violations()
    assert {v.first.holder, v.second.holder} == {"a", "b"}
    assert v.overlap == 1


def test_window_ends_at_validity_not_at_a_late_exit() -> None:
    # a's block ran on until 5, but its validity ended at 1: b at 2 is fine.
    assert MutexChecker([h("a", 0, 5, valid=1), h("b", 2, 3)]).violations() == []


def test_other_resources_do_not_conflict() -> None:
    other = Holding("b", "s", 0.5, 1e9, 1.5)
    assert MutexChecker([h("a", 0, 2), other]).violations() == []


def test_records_merge_across_processes(tmp_path: Path) -> None:
    one, two = tmp_path / "1.jsonl", tmp_path / "2.jsonl"
    MutexChecker([h("a", 0, 2)]).dump(str(one))
    MutexChecker([h("b", 1, 3)]).dump(str(two))
    assert len(MutexChecker.load(str(one), str(two)).violations()) == 1
