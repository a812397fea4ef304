"""The mutual-exclusion checker finds overlapping windows, and only those."""

from __future__ import annotations

from typing import TYPE_CHECKING

from redlock_aio.testing import Holding, MutexChecker, StoreChecker, Write

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


# -- the protected store's check: what landed, against the holders' windows --


def held(holder: str, token: str, start: float, end: float) -> Holding:
    return Holding(holder, "r", start, end, end, token=token)


def wrote(
    writer: str, token: str, at: float, valid: float, accepted: bool = True
) -> Write:
    return Write(writer, "r", token, valid, at, "k", "v", accepted)


def test_writes_inside_their_own_window_are_fine() -> None:
    holdings = [held("a", "t1", 0, 1), held("b", "t2", 1, 2)]
    writes = [wrote("a", "t1", 0.5, 1), wrote("b", "t2", 1.5, 2)]
    checker = StoreChecker(writes, holdings)
    assert checker.violations() == []
    assert checker.late() == []
    assert checker.refused() == []


def test_a_late_write_inside_another_window_is_found() -> None:
    # a believed it held until 1; its write landed at 1.5, while b held.
    late = wrote("a", "t1", 1.5, 1)
    checker = StoreChecker([late], [held("a", "t1", 0, 1), held("b", "t2", 1.2, 2)])
    [v] = checker.violations()
    assert v.write == late
    assert v.holding.holder == "b"
    assert "a wrote 'k'" in str(v)
    assert "500.000 ms after" in str(v)
    assert checker.late() == [late]


def test_a_late_write_in_no_window_is_only_late() -> None:
    late = wrote("a", "t1", 1.1, 1)
    checker = StoreChecker([late], [held("a", "t1", 0, 1), held("b", "t2", 1.2, 2)])
    assert checker.violations() == []
    assert checker.late() == [late]


def test_a_refused_write_is_no_violation_and_not_late() -> None:
    refused = wrote("a", "t1", 1.5, 1, accepted=False)
    checker = StoreChecker([refused], [held("a", "t1", 0, 1), held("b", "t2", 1.2, 2)])
    assert checker.violations() == []
    assert checker.late() == []
    assert checker.refused() == [refused]


def test_a_write_of_an_old_lock_in_its_holders_next_window_is_found() -> None:
    # The same holder, a new lock: the token tells the two apart.
    stale = wrote("a", "t1", 1.5, 1)
    checker = StoreChecker([stale], [held("a", "t1", 0, 1), held("a", "t2", 1.2, 2)])
    assert len(checker.violations()) == 1


def test_holdings_without_a_token_are_told_apart_by_holder() -> None:
    holdings = [Holding("a", "r", 0, 1, 1), Holding("b", "r", 1.2, 2, 2)]
    writes = [wrote("a", "t1", 0.5, 1), wrote("a", "t1", 1.5, 1)]
    [v] = StoreChecker(writes, holdings).violations()
    assert v.write.arrived == 1.5


def test_a_write_finds_a_long_window_behind_short_ones() -> None:
    # b's window (lost, say) spans several later ones: still found.
    others = [held(f"c{i}", f"t{i}", i + 0.1, i + 0.9) for i in range(1, 9) if i != 5]
    holdings = [held("b", "t0", 0, 10), *others, held("a", "ta", 5.2, 5.8)]
    [v] = StoreChecker([wrote("a", "ta", 5.5, 5.8)], holdings).violations()
    assert v.holding.holder == "b"
