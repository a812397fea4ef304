"""Run the benchmarks: ``python benchmarks/run.py [--quick] [--out DIR]``.

See ``benchmarks/README.md`` for what each figure means.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _main() -> int:
    # Run as a script: make the repository root importable (``benchmarks.*``).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks._main import main

    return main()


if __name__ == "__main__":
    raise SystemExit(_main())
