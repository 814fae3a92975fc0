"""Bad input: one clear line, exit 2, nothing written, base untouched. Interrupts leave nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, TEST_TOKEN, fleet_yaml, pifleet
from tests.image_read import sha256
from tests.layouts import elf_for


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _truncate_base(d: Path) -> None:
    os.truncate(d / "base.img", 200 * 1024 * 1024)


def _zero_boot_sector(d: Path) -> None:
    with open(d / "base.img", "r+b") as f:
        f.seek(16384 * 512)
        f.write(bytes(512))


def _bookworm_as_cloudinit(d: Path, make_image: Callable[..., Path]) -> None:
    """Bookworm builds (with firstrun.sh); asking for cloud-init, which it lacks, is refused."""
    (d / "base.img").unlink()
    make_image("base.img", layout="bookworm")
    _write(d / "fleet.yaml", fleet_yaml(extra="seed: {format: cloudinit-rpi}").encode())


def _no_room(d: Path, make_image: Callable[..., Path]) -> None:
    (d / "base.img").unlink()
    make_image("base.img", root_slack=512 * 1024, extra_partition=True)
    big = d / "k3s-big"
    big.write_bytes(elf_for("arm64").read_bytes() + os.urandom(24 * 1024 * 1024))


CASES: list[tuple[str, Callable[..., None], str]] = [
    (
        "unknown key",
        lambda d, m: _write(d / "fleet.yaml", fleet_yaml(extra="colour: blue").encode()),
        "colour: unknown key",
    ),
    (
        "wrong type",
        lambda d, m: _write(
            d / "fleet.yaml", fleet_yaml(users="users: [{name: ops, sudo: maybe}]").encode()
        ),
        "users[0].sudo: must be true or false",
    ),
    (
        "http server",
        lambda d, m: _write(
            d / "fleet.yaml",
            fleet_yaml(cluster="cluster: {server: 'http://x', token_file: token}").encode(),
        ),
        "cluster.server: must be an https:// URL, got 'http://x'",
    ),
    ("missing token file", lambda d, m: (d / "token").unlink(), "cluster.token_file:"),
    (
        "empty token",
        lambda d, m: _write(d / "token", b"\n"),
        "cluster.token_file: the token is empty",
    ),
    (
        "malformed token",
        lambda d, m: _write(d / "token", b"K10abc::server:x\n"),
        "invalid token CA hash length",
    ),
    (
        "invalid hostname",
        lambda d, m: _write(
            d / "fleet.yaml", fleet_yaml(devices="devices: [{hostname: -bad-}]").encode()
        ),
        "devices[0].hostname: must be an RFC 1123 host name",
    ),
    (
        "duplicate hostnames",
        lambda d, m: _write(
            d / "fleet.yaml", fleet_yaml(devices="devices: [{hostname: a}, {hostname: a}]").encode()
        ),
        "duplicate host name 'a'",
    ),
    (
        "base not a disk image",
        lambda d, m: _write(d / "base.img", b"this is not an image\n" * 100),
        "base.img: not a disk image",
    ),
    ("truncated base", lambda d, m: _truncate_base(d), "truncated"),
    ("no FAT boot partition", lambda d, m: _zero_boot_sector(d), "no FAT boot partition"),
    (
        "seed format the base cannot run",
        _bookworm_as_cloudinit,
        "seed.format cloudinit-rpi needs cloud-init, which Raspberry Pi OS bookworm (arm64) lacks",
    ),
    ("missing base", lambda d, m: (d / "base.img").unlink(), "base.img does not exist"),
    (
        "k3s wrong arch",
        lambda d, m: _write(
            d / "fleet.yaml", fleet_yaml(k3s=f"k3s: {{binary: {elf_for('armhf')}}}").encode()
        ),
        "k3s binary is armhf (ARM) but the image is arm64",
    ),
    (
        "k3s not ELF",
        lambda d, m: _write(d / "fleet.yaml", fleet_yaml(k3s="k3s: {binary: token}").encode()),
        "not an ELF executable",
    ),
    (
        "k3s sha256 mismatch",
        lambda d, m: _write(
            d / "fleet.yaml",
            fleet_yaml(k3s=f"k3s: {{binary: {elf_for('arm64')}, sha256: '{'0' * 64}'}}").encode(),
        ),
        "sha256 mismatch",
    ),
    (
        "base sha256 mismatch",
        lambda d, m: _write(
            d / "fleet.yaml",
            fleet_yaml(base=f"base: {{path: base.img, sha256: '{'a' * 64}'}}").encode(),
        ),
        "base.path: sha256 mismatch",
    ),
    (
        "arch mismatch",
        lambda d, m: _write(
            d / "fleet.yaml",
            fleet_yaml(arch="arch: armhf", k3s=f"k3s: {{binary: {elf_for('armhf')}}}").encode(),
        ),
        "arch: the config says armhf but the base image is arm64",
    ),
    (
        "output over base",
        lambda d, m: _write(
            d / "fleet.yaml", fleet_yaml(name="name: base", output="output: {dir: .}").encode()
        ),
        "would overwrite the base image",
    ),
    (
        "output inside base path",
        lambda d, m: _write(
            d / "fleet.yaml", fleet_yaml(output="output: {dir: base.img/out}").encode()
        ),
        "cannot create the output directory",
    ),
    (
        "output not writable",
        lambda d, m: _write(
            d / "fleet.yaml", fleet_yaml(output="output: {dir: /proc/pifleet-out}").encode()
        ),
        "cannot create the output directory",
    ),
    (
        "root full, cannot grow",
        lambda d, m: (
            _no_room(d, m),
            _write(d / "fleet.yaml", fleet_yaml(k3s="k3s: {binary: k3s-big}").encode()),
        ),
        "root filesystem is full and cannot grow",
    ),
]


@pytest.mark.parametrize(("label", "breaks", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(
    fleet_dir: Path,
    make_image: Callable[..., Path],
    label: str,
    breaks: Callable[..., None],
    expected: str,
) -> None:
    breaks(fleet_dir, make_image)
    base = fleet_dir / "base.img"
    before = sha256(base) if base.exists() else None
    proc = pifleet("build", "fleet.yaml", cwd=fleet_dir)
    assert proc.returncode == 2, f"{label}: rc={proc.returncode}\n{proc.stderr}"
    errors = [
        ln
        for ln in proc.stderr.splitlines()
        if not ln.startswith(("warning", "copying", "base is", "root filesystem", "growing"))
    ]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("pifleet: error: ")
    assert expected in errors[0]
    assert "Traceback" not in proc.stderr
    assert TEST_TOKEN not in proc.stderr + proc.stdout
    assert files_in(fleet_dir / "out") == [], "nothing may be written"
    if before is not None:
        assert sha256(base) == before


def test_interrupt_leaves_nothing_behind(fleet_dir: Path) -> None:
    big = fleet_dir / "k3s-big"
    with open(big, "wb") as f:
        f.write(elf_for("arm64").read_bytes())
        for _ in range(12):
            f.write(os.urandom(64 * 1024 * 1024))
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(k3s="k3s: {binary: k3s-big}"))
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = subprocess.Popen(
            [sys.executable, "-m", "builder", "build", "fleet.yaml"],
            cwd=fleet_dir,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            p.name.startswith(".") for p in (fleet_dir / "out").glob(".*")
        ):
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode in (130, 143), err
        assert "Traceback" not in err
        assert files_in(fleet_dir / "out") == [], f"{sig.name} left {files_in(fleet_dir / 'out')}"
