"""The Redlock arithmetic, with plain numbers."""

from __future__ import annotations

import itertools

import pytest

from redlock_aio._quorum import (
    Decision,
    Renewal,
    backoff,
    clock_drift,
    decide,
    quorum,
    renewal,
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
def test_decide_decides_exactly_when_the_outcome_is_known(n: int) -> None:
    """Every order of votes: REACHED once a quorum said yes, FAILED once a quorum
    is out of reach, PENDING in between, never changing its mind."""
    q = quorum(n)
    for votes in itertools.product([True, False], repeat=n):
        final = None
        for i in range(1, n + 1):
            yes = sum(votes[:i])
            no = i - yes
            decision = decide(n, q, yes, no)
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


def renew(**kwargs: float) -> tuple[Renewal, str]:
    args: dict[str, float] = {
        "n": 3,
        "needed": 2,
        "yes": 2,
        "no": 0,
        "now": 10.0,
        "old_deadline": 12.0,
        "new_deadline": 19.0,
    }
    args.update(kwargs)
    return renewal(**args)  # type: ignore[arg-type]


def test_an_extension_renews_with_a_quorum_before_both_deadlines() -> None:
    assert renew() == (Renewal.RENEWED, "")
    assert renew(now=12.0)[0] is Renewal.LOST  # the old deadline passed first
    assert renew(now=19.5, old_deadline=20.0)[0] is Renewal.MISSED  # new one passed


def test_an_extension_is_lost_when_a_quorum_no_longer_holds_the_key() -> None:
    verdict, why = renew(yes=1, no=2)
    assert verdict is Renewal.LOST
    assert "gone or taken on 2 of 3 nodes" in why


def test_an_extension_without_quorum_and_not_gone_is_missed() -> None:
    verdict, why = renew(yes=1, no=1)
    assert verdict is Renewal.MISSED
    assert why == "1 of 3 nodes extended it, 2 needed"


def test_backoff_doubles_up_to_its_cap_and_jitters_down() -> None:
    assert [backoff(a, 0.05, 1.0, 0.5, 0.0) for a in (1, 2, 3)] == [0.05, 0.1, 0.2]
    assert backoff(40, 0.05, 1.0, 0.5, 0.0) == 1.0
    assert backoff(1, 0.05, 1.0, 0.5, 0.999) == pytest.approx(0.025, rel=0.01)
