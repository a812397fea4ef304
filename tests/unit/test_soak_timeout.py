"""The soak test's timeout follows ``--soak-seconds`` (tests/conftest.py's
``pytest_collection_modifyitems``), so that ``pytest -m soak --soak-seconds 300``
is not killed by the suite's fixed timeout.

Shown in a child pytest run with the real hooks and a tiny suite timeout: a
soak-marked test outlives it, an unmarked one does not.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

INI = """
[pytest]
timeout = 0.5
markers =
    soak: a long run
asyncio_default_fixture_loop_scope = function
"""

#: For each child run: show what its tests print; no cache directory.
CHILD_ARGS = ("-s", "-p", "no:cacheprovider")

CONFTEST = (
    "from tests.conftest import pytest_addoption, pytest_collection_modifyitems\n"
)

TESTS = """
import time

import pytest


def show_timeout(request):
    marker = request.node.get_closest_marker("timeout")
    print(request.node.name, "timeout:", marker and marker.args[0])


@pytest.mark.soak
def test_a_soak_outlives_the_suite_timeout(request):
    show_timeout(request)
    time.sleep(1.5)


@pytest.mark.soak
@pytest.mark.timeout(7)
def test_a_soak_with_its_own_timeout_keeps_it(request):
    show_timeout(request)


def test_any_other_test_keeps_the_suite_timeout():
    time.sleep(1.5)
"""


@pytest.fixture
def child(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.delenv("PYTEST_TIMEOUT", raising=False)
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_dummy=TESTS)
    return pytester


def test_the_soak_timeout_follows_soak_seconds(child: pytest.Pytester) -> None:
    # A child process: pytest-timeout's alarm must not replace this run's own.
    result = child.runpytest_subprocess("--soak-seconds", "30", *CHILD_ARGS)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines_random(
        [
            "*outlives_the_suite_timeout timeout: 30.5",  # --soak-seconds + suite's
            "*with_its_own_timeout_keeps_it timeout: 7",
            "*Timeout*",
        ]
    )
    assert "FAILED test_dummy.py::test_any_other_test_keeps" in result.stdout.str()


def test_a_disabled_timeout_stays_disabled(child: pytest.Pytester) -> None:
    result = child.runpytest_subprocess(
        "--soak-seconds", "30", "--timeout", "0", "-k", "outlives", *CHILD_ARGS
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*outlives_the_suite_timeout timeout: None"])


def test_soak_seconds_must_be_a_number(child: pytest.Pytester) -> None:
    result = child.runpytest_subprocess("--soak-seconds", "long", *CHILD_ARGS)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--soak-seconds must be a number of seconds*"])
