"""The shape every benchmark with a large input shares: prepare it in a child process.

`python bench/X.py` makes a temporary directory (under $BENCH_DIR when set), runs
`python bench/X.py --prepare DIR` to fill it, then measures. Preparing in a child
keeps its peak RSS (a forked child would inherit it) out of the figures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def run(
    script: str, prepare: Callable[[Path], None], measure: Callable[[Path, float], None]
) -> None:
    """`prepare(DIR)` in the child, `measure(DIR, seconds the preparation took)` here."""
    if len(sys.argv) == 3 and sys.argv[1] == "--prepare":
        prepare(Path(sys.argv[2]))
        return
    with tempfile.TemporaryDirectory(
        prefix="pifleet-bench-", dir=os.environ.get("BENCH_DIR")
    ) as tmp:
        start = time.monotonic()
        subprocess.run([sys.executable, script, "--prepare", tmp], check=True)
        measure(Path(tmp), time.monotonic() - start)
