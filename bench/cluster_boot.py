#!/usr/bin/env python3
"""The two-guest cluster boot, timed: `pifleet cluster init`, a per-device build of a
one-server, one-agent fleet, then the server guest and the agent guest under QEMU on one
socket network (tests/test_cluster_boot.py, marker `cluster`).

Prints the build time and when each guest's agent reported `joined` (seconds since its
QEMU started), and the whole test's time. Asserts nothing itself; exit 1 when the test
failed.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from xml.etree import ElementTree

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="pifleet-bench-cluster-") as tmp:
        report = Path(tmp) / "cluster.xml"
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
             "-m", "cluster", f"--junitxml={report}", "tests/test_cluster_boot.py"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if not report.exists():
            print("bench/cluster_boot.py: pytest wrote no report", file=sys.stderr)
            return 1
        failed = 0
        root = ElementTree.parse(report).getroot()
        for case in root.iter("testcase"):
            bad = case.find("failure") is not None or case.find("error") is not None
            failed += bad
            print(f"{case.get('name', '?')}: {'FAILED' if bad else 'passed'}")
            print(f"  {'test_seconds':<28} {float(case.get('time', 0)):.0f}")
        for prop in root.iter("property"):  # the test's own figures (record_testsuite_property)
            print(f"  {prop.get('name', '?'):<28} {prop.get('value', '')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
