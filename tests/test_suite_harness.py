"""The test suite itself, as a user's shell may start it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_a_suite_started_with_sigint_ignored_can_still_interrupt_its_children(
    tmp_path: Path,
) -> None:
    """A shell without job control (`nohup make test &` in a script) starts pytest with SIGINT
    ignored, and every child inherits that: each test that stops a child with SIGINT, as
    Ctrl-C would, then waits for it in vain (three timed out so in one CI run here)."""
    test = "tests/test_testserver.py::test_cli_serves_and_writes_the_token_0600"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         f"--basetemp={tmp_path / 'inner'}", test],
        cwd=REPO, preexec_fn=_ignore_sigint, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
