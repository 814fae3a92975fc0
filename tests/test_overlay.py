"""The boot-test overlay: qcow2 over the untouched image, boot-partition edits inside it."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path

from builder.disk.table import read_table
from builder.qemu import overlay
from tests.image_read import MTOOLS_ENV


def boot_of_overlay(image: Path, disk: Path, tmp: Path) -> Path:
    """The boot partition as the guest would see it, read back through qemu-img."""
    part = read_table(image).partition(1)
    out = tmp / "boot.raw"
    mib = 1024 * 1024
    # qemu-img dd counts `count` from block 0, skipped blocks included.
    subprocess.run(
        ["qemu-img", "dd", "-f", "qcow2", "-O", "raw", f"if={disk}", f"of={out}", f"bs={mib}",
         f"skip={part.start // mib}", f"count={(part.start + part.size) // mib}"],
        check=True, capture_output=True,
    )  # fmt: skip
    assert out.stat().st_size == part.size
    return out


def test_edits_land_in_the_overlay_only(make_image: Callable[..., Path], tmp_path: Path) -> None:
    image = make_image()
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    disk = tmp_path / "disk.qcow2"
    overlay.create(image, disk)
    files = {"/pifleet/device.json": b'{"server": "https://10.0.2.2:6443"}\n', "/pifleet/token": b"t0k3n\n",
             "/user-data": None}  # fmt: skip
    written = overlay.write_boot_files(image, disk, files, 1_700_000_000)
    assert 0 < written <= 512 * 1024, "only the changed blocks are written"
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before
    boot = boot_of_overlay(image, disk, tmp_path)
    read = subprocess.run(
        ["mtype", "-i", str(boot), "::/pifleet/device.json"], capture_output=True, env=MTOOLS_ENV
    )
    assert read.stdout == files["/pifleet/device.json"]
    listing = subprocess.run(
        ["mdir", "-b", "-i", str(boot), "::/"], capture_output=True, text=True, env=MTOOLS_ENV
    )
    assert (
        "::/user-data" not in listing.stdout.split() and "::/cmdline.txt" in listing.stdout.split()
    )
    check = subprocess.run(["fsck.vfat", "-n", str(boot)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_changed_ranges_merges_neighbours(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for path in (a, b):
        with open(path, "wb") as f:
            f.truncate(1024 * 1024)
    with open(b, "r+b") as f:
        f.seek(100)
        f.write(b"x")
        f.seek(65536 + 5)
        f.write(b"y")
        f.seek(500_000)
        f.write(b"z")
    assert overlay.changed_ranges(a, b) == [(0, 131072), (458752, 65536)]


def test_a_boot_file_is_read_back_as_the_guest_left_it(
    make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """What boot-test reads before each power-on (a Pi's firmware reads cmdline.txt at each)."""
    image = make_image()
    disk = tmp_path / "disk.qcow2"
    overlay.create(image, disk)
    original = overlay.read_boot_file(image, disk, "/cmdline.txt")
    assert original is not None and original.startswith(b"console=serial0,115200 ")
    edited = original.rstrip(b"\n") + b" systemd.run=/boot/firmware/firstrun.sh"
    overlay.write_boot_files(image, disk, {"/cmdline.txt": edited}, 1_700_000_000)
    assert overlay.read_boot_file(image, disk, "/cmdline.txt") == edited
    assert overlay.read_boot_file(image, disk, "/firstrun.sh") is None
    assert list(tmp_path.glob("*overlay*")) == []  # the carved-out partition is gone
