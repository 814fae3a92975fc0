#!/usr/bin/env python3
"""`make bench`: run every benchmark under bench/ in turn and print its figures.

Each benchmark is a script that prints figures and asserts nothing; this runs
them one after another (never in parallel: they measure the same 2 cores) and
says which, if any, failed. `bench/run.py build boot` runs only those.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = (
    "build",
    "sources",
    "personalize_flash",
    "agent_startup",
    "join_storm",
    "boot",
    "faults",
    "cluster_boot",
)


def main() -> int:
    wanted = sys.argv[1:] or [n for n in ORDER if (HERE / f"{n}.py").exists()]
    unknown = [n for n in wanted if not (HERE / f"{n}.py").exists()]
    if unknown:
        print(f"bench/run.py: no such benchmark: {', '.join(unknown)}", file=sys.stderr)
        return 2
    failed = []
    for name in wanted:
        print(f"== bench/{name}.py", flush=True)
        start = time.monotonic()
        code = subprocess.run([sys.executable, str(HERE / f"{name}.py")]).returncode
        print(f"   ({time.monotonic() - start:.0f} s, exit {code})\n", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
