"""Child process of the heavy overload scenarios: ``python _child.py SPEC``.

``SPEC`` is JSON: ``{"body": name in _bursts.BODIES, "urls": [...],
"params": {...}, "loop": "asyncio" | "uvloop"}``. The body runs on that event
loop; a watchdog thread prints ``PROGRESS {json}`` every second (the rows so
far, the row under way, RSS, and the longest event-loop stall seen per row),
and the main thread ``RESULT {json}`` at the end. The parent
(``_overload.run_child``) kills the child at its hard limit and keeps the last
progress. The child dies with its parent (``PR_SET_PDEATHSIG``, Linux).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any


def _die_with_parent() -> None:
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except Exception:  # noqa: BLE001, S110 - best effort (not Linux)
        pass


class Watch(threading.Thread):
    """Samples the body's progress: the longest stall of the event loop per
    row (age of the heartbeat stamp), and a PROGRESS line every second."""

    def __init__(self, progress: dict[str, Any], status_mb: Any) -> None:
        super().__init__(daemon=True)
        self.p = progress
        self.status_mb = status_mb
        self.stalls: dict[str, float] = {}
        self.done = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        last_print = 0.0
        while not self.done.wait(0.1):
            now = time.monotonic()
            current = self.p.get("current")
            beat = self.p.get("beat") or now
            if current is not None:
                group = current[0]
                stall = max(0.0, now - beat)
                if stall > self.stalls.get(group, 0.0):
                    self.stalls[group] = stall
            if now - last_print >= 1.0:
                last_print = now
                self.emit("PROGRESS")

    def snapshot(self) -> str:
        for _ in range(5):
            try:
                return json.dumps(
                    {
                        "t": round(time.monotonic() - self.t0, 2),
                        "rss_mb": self.status_mb("VmRSS"),
                        "hwm_mb": self.status_mb("VmHWM"),
                        "rows": self.p["rows"],
                        "current": self.p["current"],
                        "stalls": {k: round(v, 3) for k, v in self.stalls.items()},
                    }
                )
            except RuntimeError:  # changed while dumped: try again
                continue
        return "{}"

    def emit(self, kind: str) -> None:
        sys.stdout.write(f"{kind} {self.snapshot()}\n")
        sys.stdout.flush()


def main() -> int:
    spec = json.loads(sys.argv[1])
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    _die_with_parent()
    import logging
    import warnings

    logging.getLogger("redlock_aio").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from benchmarks import _bursts
    from benchmarks._main import run_on

    body = _bursts.BODIES[spec["body"]](spec["urls"], spec["params"])
    watch = Watch(_bursts.P, _bursts.status_mb)
    _bursts.P["beat"] = time.monotonic()
    watch.start()
    try:
        run_on(spec["loop"], _bursts.with_heartbeat(body))
    finally:
        watch.done.set()
        watch.join()
    watch.emit("RESULT")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
