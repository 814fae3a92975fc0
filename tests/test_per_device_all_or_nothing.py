"""`build --per-device` is all or nothing (issue 11): interrupted at the second device
(Ctrl-C, as the real CLI sees it), it leaves no golden image, no device image, no keys made
by this run and no known_hosts; identities of earlier runs stay."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from builder.fleet.devicekeys import ensure_identity
from tests.conftest import REPO, fleet_yaml

# Raise KeyboardInterrupt in the second device's personalization, then run the real CLI.
_INTERRUPT = """
import sys
import builder.fleet.personalize as p
real, calls = p.personalize_copy, []
def interrupted(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        raise KeyboardInterrupt
    return real(*args, **kwargs)
p.personalize_copy = interrupted
from builder.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def interrupted_build(fleet_dir: Path) -> subprocess.CompletedProcess[str]:
    devices = "devices:\n" + "\n".join(f"  - {{hostname: pi-{i}}}" for i in range(1, 4))
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(devices=devices))
    return subprocess.run(
        [sys.executable, "-c", _INTERRUPT, "build", "fleet.yaml", "--per-device"],
        cwd=fleet_dir,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )


def test_interrupted_per_device_run_leaves_nothing(fleet_dir: Path) -> None:
    proc = interrupted_build(fleet_dir)
    assert proc.returncode == 130, proc.stderr
    assert "partial outputs removed" in proc.stderr
    assert not (fleet_dir / "out").exists(), sorted(p.name for p in (fleet_dir / "out").rglob("*"))


def test_interrupted_per_device_run_keeps_earlier_identities(fleet_dir: Path) -> None:
    ensure_identity(fleet_dir / "out", "pi-1")
    files = sorted((fleet_dir / "out/devices/pi-1").iterdir())
    before = {p: p.read_bytes() for p in files}
    proc = interrupted_build(fleet_dir)
    assert proc.returncode == 130, proc.stderr
    left = sorted(str(p.relative_to(fleet_dir / "out")) for p in (fleet_dir / "out").rglob("*"))
    assert left == [
        "devices",
        "devices/pi-1",
        "devices/pi-1/node-password",
        "devices/pi-1/ssh_host_ed25519_key",
        "devices/pi-1/ssh_host_ed25519_key.pub",
    ]
    assert {p: p.read_bytes() for p in files} == before
