"""Running `pifleet build` from a test: the build passes and no output carries the token."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import TEST_TOKEN, pifleet


def build_ok(fleet_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    proc = pifleet("build", "fleet.yaml", *extra, cwd=fleet_dir)
    assert proc.returncode == 0, f"the build failed: {proc.stderr}"
    assert TEST_TOKEN not in proc.stdout + proc.stderr, "the build printed the token"
    return proc
