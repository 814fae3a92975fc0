"""A golden image built once per test module by the real `pifleet build`, a private copy of
it per test, and the real CLI run with the house checks: no secret, no traceback, and a bad
input reported in one line with the right exit code. Used by the `pifleet flash` tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import TEST_TOKEN, fleet_yaml, pifleet

GOLDEN = "out/edge-fleet.img"


# --- a golden image built by the real `pifleet build`, copied per test ---------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.layouts import make_pi_image

    d = tmp_path_factory.mktemp("golden")
    make_pi_image(d / "base.img")
    (d / "token").write_text(TEST_TOKEN + "\n")
    (d / "token").chmod(0o600)
    devices = "devices:\n" + "\n".join(f"  - {{hostname: pi-{i:03d}}}" for i in range(1, 4))
    (d / "fleet.yaml").write_text(fleet_yaml(devices=devices))
    proc = pifleet("build", "fleet.yaml", cwd=d)
    assert proc.returncode == 0, proc.stderr
    (d / "base.img").unlink()
    return d


@pytest.fixture
def work(built: Path, tmp_path: Path) -> Path:
    """A private copy of the built fleet directory (sparse), so a test may change anything."""
    d = tmp_path / "fleet"
    subprocess.run(["cp", "-a", "--sparse=always", str(built), str(d)], check=True)
    return d


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real CLI; every run is checked for leaked secrets and tracebacks."""
    proc = pifleet(*args, cwd=cwd)
    output = proc.stdout + proc.stderr
    assert TEST_TOKEN not in output, f"pifleet {args[0]} printed the token"
    assert "s3cr3t-t0ken" not in output, f"pifleet {args[0]} printed the token's secret part"
    assert "Traceback" not in output, f"pifleet {args[0]} printed a traceback: {output}"
    return proc


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    assert proc.returncode == code, (
        f"exit {proc.returncode}, not {code}: {proc.stdout}{proc.stderr}"
    )
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"the error is not one line: {proc.stderr}"
    assert lines[0].startswith("pifleet: error: "), f"not a pifleet error line: {lines[0]}"
    for fragment in fragments:
        assert fragment in lines[0], f"the error does not say {fragment!r}: {lines[0]}"
    return lines[0]
