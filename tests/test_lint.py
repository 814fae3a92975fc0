"""`pifleet lint`: a clean build passes; each kind of damage, made with mtools and debugfs on a
built image, is one line and exit 1; a build whose result fails lint is refused."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import pifleet
from tests.layouts import elf_for
from tests.test_build import build_ok, partitions, root_spec

MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def fat_write(image: Path, name: str, data: bytes, tmp: Path) -> None:
    src = tmp / name
    src.write_bytes(data)
    boot = partitions(image)[0]["start"] * 512
    subprocess.run(
        ["mcopy", "-o", "-i", f"{image}@@{boot}", str(src), f"::/{name}"],
        check=True,
        env=MTOOLS_ENV,
    )


def test_clean_build_passes_and_damage_is_reported(fleet_dir: Path, tmp_path: Path) -> None:
    build_ok(fleet_dir)
    image = fleet_dir / "out" / "edge-fleet.img"
    clean = pifleet("lint", str(image), cwd=fleet_dir)
    assert clean.returncode == 0 and clean.stdout == "", clean.stdout + clean.stderr

    work = tmp_path / "damage"
    work.mkdir()
    fat_write(
        image, "cmdline.txt", b"console=tty1 root=PARTUUID=deadbeef-02 rootwait\nquiet\n", work
    )
    fat_write(image, "config.txt", b"[all]\narm_64bit=1\ndtoverlay vc4\n", work)
    fat_write(image, "user-data", b"#cloud-config\nkeyboard: {layout: 5}\n", work)
    fat_write(image, "network-config", b"version: 1\n", work)
    fat_write(
        image,
        "rpi-preseed.toml",
        b'config_version = "1.1"\n[wlan]\nssid = "x"\npassword = "no"\n',
        work,
    )
    fat_write(image, "firstrun.sh", b"#!/bin/sh\nif true; then\n", work)
    subprocess.run(
        ["debugfs", "-w", "-R", f"write {elf_for('armhf')} /usr/local/bin/k3s.new", root_spec(image)],
        check=True, capture_output=True,
    )  # fmt: skip
    for cmd in ("unlink /usr/local/bin/k3s", "link /usr/local/bin/k3s.new /usr/local/bin/k3s"):
        subprocess.run(
            ["debugfs", "-w", "-R", cmd, root_spec(image)], check=True, capture_output=True
        )

    proc = pifleet("lint", str(image), cwd=fleet_dir)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    expected = [
        "cmdline.txt: 2 lines",
        "cmdline.txt: no cgroup_enable=memory",
        "cmdline.txt: root=PARTUUID=deadbeef-02 is not this image's root partition",
        "config.txt:3: not a [filter] or key=value line: 'dtoverlay vc4'",
        "user-data: ",
        "network-config: expected network: {version: 2, ...}",
        "rpi-preseed.toml: wlan.password: ",
        "firstrun.sh: ",
        "/usr/local/bin/k3s: binary is armhf but the image is arm64",
    ]
    for text in expected:
        assert any(f"{image}: {text}" in line for line in lines), (text, lines)
    assert len(lines) == len(expected), lines


def test_build_refuses_an_image_that_fails_lint(fleet_dir: Path) -> None:
    """The base's root= names a partition the image does not have: no step looks at it, lint
    does, and the build fails with one error line and writes nothing."""
    image = fleet_dir / "base.img"
    work = fleet_dir / "w"
    work.mkdir()
    fat_write(image, "cmdline.txt", b"console=tty1 root=/dev/mmcblk0p3 rootwait\n", work)
    proc = pifleet("build", "fleet.yaml", cwd=fleet_dir)
    assert proc.returncode == 1
    assert "root=/dev/mmcblk0p3 is not this image's root partition" in proc.stderr
    assert proc.stderr.count("error") == 1, proc.stderr
    assert not (fleet_dir / "out" / "edge-fleet.img").exists()
