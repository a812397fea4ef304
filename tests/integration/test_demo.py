"""``python -m redlock_aio demo``: end to end on nodes it starts itself (in a
subprocess, also interrupted with Ctrl-C), on given nodes (in-process), with the
rich live table, and without any redis-server binary."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from redlock_aio.__main__ import main
from redlock_aio.testing import ENV_VAR

if TYPE_CHECKING:
    from redlock_aio.testing import LocalCluster

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEMO = (sys.executable, "-m", "redlock_aio", "demo")


def demo_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


def node_pids(output: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"\(pid (\d+)\)", output)]


def redis_alive(pid: int) -> bool:
    """True if ``pid`` is (still) a redis-server process, zombies included."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return b"redis-server" in cmdline or not cmdline  # a zombie has none


def assert_passed(output: str) -> None:
    assert re.search(r"max simultaneous holders:\s+1\n", output), output
    assert "no lost update" in output, output
    assert "LOST UPDATES" not in output, output
    assert "result: OK" in output, output


def test_demo_on_local_nodes_it_starts_and_stops() -> None:
    proc = subprocess.run(
        [*DEMO, "--duration", "1.5", "--workers", "4", "--no-live"],
        capture_output=True,
        text=True,
        env=demo_env(),
        cwd=ROOT,
        timeout=90,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert_passed(out)
    assert "(from " in out  # where the binary came from
    assert re.search(r"nodes left:\s+clean \(DBSIZE per node: \[0, 0, 0\]\)", out)
    pids = node_pids(out)
    assert len(pids) == 3, out
    assert f"stopped the local nodes (pids {', '.join(map(str, pids))})" in out
    assert [pid for pid in pids if redis_alive(pid)] == []


def test_demo_stops_its_nodes_when_interrupted() -> None:
    proc = subprocess.Popen(
        [*DEMO, "--duration", "600", "--workers", "2", "--no-live"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=demo_env(),
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        # The first progress line: the nodes are up and the workers run.
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("["):
                break
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out = "".join(lines) + rest
    assert proc.returncode == 130, out + err
    assert "interrupted" in err
    pids = node_pids(out)
    assert len(pids) == 3, out
    assert "stopped the local nodes" in out
    assert [pid for pid in pids if redis_alive(pid)] == []


def test_demo_on_given_nodes(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["demo", "--duration", "1.0", "--workers", "4", "--no-live"]
    for url in cluster.urls:
        argv += ["--node", url]
    argv += ["--restart-quarantine", "0"]  # the fixture's nodes are fresh
    pids = [server.pid for server in cluster]

    assert main(argv) == 0

    out = capsys.readouterr().out
    assert_passed(out)
    assert "nodes: 3 given with --node (none started)" in out
    assert "not checked (--node given" in out
    assert "stopped the local nodes" not in out
    assert [server.pid for server in cluster] == pids  # none touched
    # The cluster fixture checks that no key was left on any node.


def test_demo_live_table_with_rich(
    cluster: LocalCluster,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("rich")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    argv = ["demo", "--duration", "1.0", "--workers", "2", "--resource", "live"]
    for url in cluster.urls:
        argv += ["--node", url]
    argv += ["--restart-quarantine", "0"]  # the fixture's nodes are fresh

    assert main(argv) == 0

    out = capsys.readouterr().out
    assert "Redlock demo: 'live'" in out  # the table's title
    assert_passed(out)


def test_demo_without_a_redis_server_binary(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "no-such-redis-server"))

    assert main(["demo", "--duration", "1", "--no-live"]) == 2

    captured = capsys.readouterr()
    assert ENV_VAR in captured.err
    assert "is not an executable file" in captured.err
    assert "nodes:" not in captured.out  # nothing was started


def test_demo_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "--workers", "0"])
    assert info.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err
