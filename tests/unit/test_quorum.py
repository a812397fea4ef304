"""The Redlock arithmetic, with plain numbers."""

from __future__ import annotations

import itertools

import pytest

from redlock_aio._quorum import (
    Decision,
    Tally,
    clock_drift,
    quorum,
    validity_deadline,
)


@pytest.mark.parametrize(("n", "q"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)])
def test_quorum_is_majority(n: int, q: int) -> None:
    assert quorum(n) == q


def test_drift_is_one_percent_plus_two_ms() -> None:
    assert clock_drift(10.0, 0.01) == pytest.approx(0.102)
    assert clock_drift(1.0, 0.0) == pytest.approx(0.002)


def test_validity_counts_elapsed_from_before_the_first_send() -> None:
    # ttl 10 s, started at t=100: valid until 100 + 10 - 0.102, whatever the
    # time at which the quorum answered.
    assert validity_deadline(100.0, 10.0, 0.01) == pytest.approx(109.898)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7])
def test_tally_decides_exactly_when_the_outcome_is_known(n: int) -> None:
    """Every order of votes: REACHED once a quorum said yes, FAILED once a quorum
    is out of reach, PENDING in between, never changing its mind."""
    q = quorum(n)
    for votes in itertools.product([True, False], repeat=n):
        tally = Tally(n)
        final = None
        for i, vote in enumerate(votes, 1):
            decision = tally.add(vote)
            yes = sum(votes[:i])
            no = i - yes
            if yes >= q:
                expected = Decision.REACHED
            elif n - no < q:
                expected = Decision.FAILED
            else:
                expected = Decision.PENDING
            assert decision is expected, (votes, i)
            if final is None and decision is not Decision.PENDING:
                final = decision
            if final is not None:
                assert decision is final
        assert final is (Decision.REACHED if sum(votes) >= q else Decision.FAILED)
