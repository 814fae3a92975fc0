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


SHARED_BOOTS = """
import os
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def arm64_device():
    return os.getpid()


@pytest.mark.parametrize("n", range(6))
def test_boot(arm64_device, n):
    print("BOOTED-IN", arm64_device)


def test_plain():
    pass
"""


def test_boots_of_one_shared_image_run_on_one_worker(tmp_path: Path) -> None:
    """Under `-n 2 --dist loadgroup` (tools/test.sh), every test of the shared arm64 image is
    scheduled as one group (its node id ends in `@qemu-arm64`) and runs in one worker process,
    so the image is built and booted once. Before tests/suite_plugin.py's hook ran first, the
    groups were never seen, and each worker built and booted the image again."""
    (tmp_path / "test_shared.py").write_text(SHARED_BOOTS)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-s", "-p", "no:cacheprovider", "-o", "addopts=",
         "-p", "tests.suite_plugin", "-n", "2", "--dist", "loadgroup", f"--rootdir={tmp_path}",
         f"--basetemp={tmp_path / 'inner'}", str(tmp_path / "test_shared.py")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    grouped = [ln for ln in proc.stdout.splitlines() if "PASSED" in ln and "test_boot[" in ln]
    assert len(grouped) == 6 and all("@qemu-arm64" in ln for ln in grouped), grouped
    workers = {ln.split()[0] for ln in grouped}
    assert len(workers) == 1, f"the shared image's tests ran on workers {workers}"
    assert "test_plain PASSED" in proc.stdout or "::test_plain" in proc.stdout, proc.stdout
