"""The shape the QEMU benchmarks share: run some tests under pytest (every marker on),
read pytest's JUnit XML report, and print one line per test case."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

REPO = Path(__file__).resolve().parent.parent
Case = ElementTree.Element


def run_tests(
    marker: str, files: list[str], show: Callable[[Case, str], None]
) -> tuple[int, ElementTree.Element | None]:
    """Run `files` with `-m marker` and call `show(case, result)` for each test case, result
    being "FAILED", "skipped" or "passed". Returns (failed cases, the report's root); root is
    None (and one line on stderr) when pytest wrote no report."""
    with tempfile.TemporaryDirectory(prefix="pifleet-bench-junit-") as tmp:
        report = Path(tmp) / "report.xml"
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
             "-m", marker, f"--junitxml={report}", *files],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if not report.exists():
            print(f"{Path(sys.argv[0]).name}: pytest wrote no report", file=sys.stderr)
            return 1, None
        root = ElementTree.parse(report).getroot()
    failed = 0
    for case in root.iter("testcase"):
        bad = case.find("failure") is not None or case.find("error") is not None
        failed += bad
        show(case, "FAILED" if bad else "skipped" if case.find("skipped") is not None else "passed")
    return failed, root
