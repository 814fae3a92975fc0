#!/usr/bin/env python3
"""The two-guest cluster boot, timed: `pifleet cluster init`, a per-device build of a
one-server, one-agent fleet, then the server guest and the agent guest under QEMU on one
socket network (tests/test_cluster_boot.py, marker `cluster`).

Prints the build time and when each guest's agent reported `joined` (seconds since its
QEMU started), and the whole test's time. Asserts nothing itself; exit 1 when the test
failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.junit import Case, run_tests


def show(case: Case, result: str) -> None:
    print(f"{case.get('name', '?')}: {result}")
    print(f"  {'test_seconds':<28} {float(case.get('time', 0)):.0f}")


def main() -> int:
    failed, root = run_tests("cluster", ["tests/test_cluster_boot.py"], show)
    for prop in [] if root is None else root.iter("property"):  # record_testsuite_property
        print(f"  {prop.get('name', '?'):<28} {prop.get('value', '')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
