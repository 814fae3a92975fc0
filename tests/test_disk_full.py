"""A full disk is one line naming the folder and the room needed, nothing left (issue 11,
"Full disk"), and exit 1, a runtime failure, whichever path finds it (issue 21, item 8: it
was 2 before a build's copy and 1 while downloading). The output folder is a small tmpfs
mounted by the test."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import fleet_yaml, pifleet

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (needs root)")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_output_disk_too_small_is_said_before_copying(fleet_dir: Path, small_disk: Path) -> None:
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(output=f"output: {{dir: {small_disk}}}"))
    proc = pifleet("build", "fleet.yaml", cwd=fleet_dir)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("pifleet: ")]
    assert proc.returncode == 1, proc.stderr
    assert len(errors) == 1, proc.stderr
    assert f"pifleet: error: {small_disk}: not enough free space for edge-fleet.img" in errors[0]
    assert "needs about" in errors[0] and "free" in errors[0]
    assert list(small_disk.iterdir()) == []


def test_disk_filling_up_while_writing_is_one_line(tmp_path: Path, small_disk: Path) -> None:
    from builder.util.errors import BuildError
    from builder.util.space import reported_full

    with pytest.raises(BuildError) as info, reported_full(small_disk, "x.img"):
        (small_disk / "x.img").write_bytes(b"\1" * (4 << 20))
    assert str(info.value).startswith(f"{small_disk}: disk full while writing x.img (")


def test_personalize_onto_a_full_disk_is_one_line_exit_1(fleet_dir: Path, small_disk: Path) -> None:
    """The device image is a sparse copy of the golden one: it fills the 2 MiB disk while being
    written. One line naming the folder, exit 1 (as a build's), nothing left there."""
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(devices="devices: [{hostname: edge-001}]"))
    assert pifleet("build", "fleet.yaml", cwd=fleet_dir).returncode == 0
    dest = small_disk / "edge-001.img"
    proc = pifleet(
        "personalize", "out/edge-fleet.img", "--config", "fleet.yaml", "--device", "edge-001",
        "-o", str(dest), cwd=fleet_dir,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(
        f"pifleet: error: {small_disk}: disk full while writing edge-001.img ("
    )
    assert proc.stderr.count("\n") == 1 and proc.stderr.endswith(" free)\n"), proc.stderr
    assert list(small_disk.iterdir()) == []
