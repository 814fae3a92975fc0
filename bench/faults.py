#!/usr/bin/env python3
"""The whole QEMU fault series, timed: a power cut in each of the agent's seven states, no
real-time clock (1970 and 3 years ahead), the server gone for 2 minutes during `start`, the
Ethernet link down and up during `verify` (issue 14), and the K3s join boots (issue 10):
bootstrap token + CA bundle + unnamed address, /cacerts 503 then Bearer 403, and a wrong
password fixed on the server mid-boot.

Runs tests/test_boot_faults.py and tests/test_boot_k3s.py with every marker (the default test run takes only the
verify and start power cuts) and prints, per fault, whether the device joined exactly
once and how long the test took (image build shared; each test boots once or twice).
Asserts nothing itself; exit 1 when a fault test failed.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from xml.etree import ElementTree

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="pifleet-bench-faults-") as tmp:
        report = Path(tmp) / "faults.xml"
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
             "-m", "slow or faults", f"--junitxml={report}", "tests/test_boot_faults.py",
             "tests/test_boot_k3s.py"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if not report.exists():
            print("bench/faults.py: pytest wrote no report", file=sys.stderr)
            return 1
        cases = ElementTree.parse(report).getroot().iter("testcase")
        failed = 0
        print(f"{'fault':<58} {'result':<8} seconds")
        for case in cases:
            bad = case.find("failure") is not None or case.find("error") is not None
            skipped = case.find("skipped") is not None
            failed += bad
            result = "FAILED" if bad else "skipped" if skipped else "joined"
            print(f"{case.get('name', '?'):<58} {result:<8} {float(case.get('time', 0)):7.0f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
