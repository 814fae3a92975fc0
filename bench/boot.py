#!/usr/bin/env python3
"""Benchmark `pifleet base` and `pifleet boot-test` (issue 6 figures), per boot mode (issue 23).

Prints, for each architecture asked for (default: arm64):
  - `pifleet base` time from the cache (seconds), and with --fresh a rebuild
    from Debian packages (target: a fresh arm64 base in under 10 minutes);
  - for each mode asked for (default: both), the boot-test milestones of an image built by
    `pifleet build` with the K3s test stand-in: kernel -> cloud-init finished -> agent joined;
    `generic`: pifleet's base as it is, its own Debian kernel; `pi-kernel`: the same base laid
    out as Raspberry Pi OS (tests/pi_layout.py, a Pi kernel only), so boot-test boots the
    kernel it supplies, with its modules disk (a first run also fetches that kernel: the
    figure says how long); `raspi3b` (arm64 only): QEMU's Pi 3 board booting the card's own
    kernel8.img, initramfs8 and device tree (tests/pi_layout.py `pi_board_image`);
  - the QEMU process's peak RSS.

Usage: bench/boot.py [--fresh] [--arch arm64|armhf ...] [--mode generic|pi-kernel|raspi3b ...]
(needs root for a fresh base)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder.qemu.boottest import BootOptions, boot_test  # noqa: E402
from builder.qemu.supplied import supplied_kernel  # noqa: E402
from tests.boot_helpers import SUITES, base_image, device_image  # noqa: E402
from tests.pi_layout import pi_board_image, pi_kernel_only  # noqa: E402


def base_seconds(arch: str, fresh: bool) -> float:
    """The base the boot tests use: its suite is their setting (tests/boot_helpers.py SUITES)."""
    argv = [sys.executable, "-m", "builder", "-q", "base", "--arch", arch, "--suite", SUITES[arch]]
    start = time.monotonic()
    subprocess.run(
        [*argv, *(["--rebuild"] if fresh else [])],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return time.monotonic() - start


def boot(arch: str, workdir: Path, mode: str) -> None:
    base = None
    if mode == "pi-kernel":
        start = time.monotonic()
        supplied_kernel(arch)
        print(
            f"  supplied kernel ready in {time.monotonic() - start:.1f} s (cached after a first fetch)"
        )
        base = pi_kernel_only(base_image(arch), workdir / "pi-layout.img", arch)
    elif mode == "raspi3b":
        base = pi_board_image(base_image(arch), workdir / "board.img", workdir)
    image, state = device_image(workdir, arch, base_path=base)
    machine = "raspi3b" if mode == "raspi3b" else "virt"
    result = boot_test(BootOptions(image=image, timeout=1800, server_state=state, machine=machine))
    marks = dict(result.milestones)
    print(f"  boot-test {'passed' if result.passed else 'FAILED: ' + str(result.failure)}")
    for name, seconds in result.milestones:
        print(f"    {seconds:7.1f} s  {name}")
    if {"kernel started", "cloud-init finished", "joined"} <= marks.keys():
        kernel, cloud, joined = (
            marks["kernel started"],
            marks["cloud-init finished"],
            marks["joined"],
        )
        print(
            f"  kernel -> cloud-init finished {cloud - kernel:.0f} s, "
            f"-> agent joined {joined - kernel:.0f} s"
        )
    print(f"  peak QEMU RSS {result.peak_rss_kib / 1024:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="also time a rebuild of the base")
    parser.add_argument("--arch", action="append", choices=("arm64", "armhf"))
    parser.add_argument("--mode", action="append", choices=("generic", "pi-kernel", "raspi3b"))
    args = parser.parse_args()
    for arch in args.arch or ["arm64"]:
        print(f"{arch}:")
        if args.fresh:
            print(f"  pifleet base, fresh   {base_seconds(arch, True):7.1f} s  (target < 600 s)")
        print(f"  pifleet base, cached  {base_seconds(arch, False):7.1f} s")
        for mode in args.mode or ["generic", "pi-kernel"]:
            print(f" {mode}:")
            with tempfile.TemporaryDirectory(prefix="pifleet-bench-boot-") as tmp:
                boot(arch, Path(tmp), mode)


if __name__ == "__main__":
    main()
