#!/usr/bin/env python3
"""The whole QEMU fault series, timed: a power cut in each of the agent's seven states, no
real-time clock (1970 and 3 years ahead), the server gone for 2 minutes during `start`, the
Ethernet link down and up during `verify` (issue 14), and the K3s join boots (issue 10):
bootstrap token + CA bundle + unnamed address, /cacerts 503 then Bearer 403, and a wrong
password fixed on the server mid-boot; and what K3s and etcd refuse at first boot (issue 24):
an empty node password file, a re-flashed first server, a re-flashed server etcd still knows;
and a token the server refuses (boot-test's verdict and the card's story).

Runs tests/test_boot_faults.py, tests/test_boot_k3s.py and tests/test_boot_k3s_refusals.py
with every marker (the default test run takes only the verify and start power cuts) and
prints, per fault, whether the device joined exactly once and how long the test took (image
build shared; each test boots once or twice).
Asserts nothing itself; exit 1 when a fault test failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.junit import Case, run_tests


def show(case: Case, result: str) -> None:
    result = "joined" if result == "passed" else result
    print(f"{case.get('name', '?'):<58} {result:<8} {float(case.get('time', 0)):7.0f}")


def main() -> int:
    print(f"{'fault':<58} {'result':<8} seconds")
    failed, _ = run_tests(
        "slow or faults",
        ["tests/test_boot_faults.py", "tests/test_boot_k3s.py", "tests/test_boot_k3s_refusals.py"],
        show,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
