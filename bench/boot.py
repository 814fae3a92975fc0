#!/usr/bin/env python3
"""Benchmark `pifleet base` and `pifleet boot-test`: boot-to-joined for each boot mode and image
family (issues 6 and 23), side by side with the same fleet on pifleet's own base, from one run.

Prints, for each architecture asked for (default: arm64):
  - `pifleet base` time from the cache (seconds), and with --fresh a rebuild from Debian
    packages (target: a fresh arm64 base in under 10 minutes);
  - for each mode asked for (default: every mode of the architecture), boot-test's timeline of
    an image built by `pifleet build` from that family's card with the K3s test stand-in, the
    same fleet in every mode (its agent block is the board tests', `clock_sync_timeout: 10`);
  - a table: each mode's kernel started and joined (seconds from power-on), and joined as a ratio
    of the yardstick's (`generic`, pifleet's own base booting its own kernel under -M virt),
    all measured in this one run, one boot after another, on the same machine.

Modes (tests/pi_layout.py, tests/pi_distros.py lay the cards out from pifleet's base):
  generic          pifleet's base as it is, its own Debian kernel, -M virt (the yardstick)
  pi-os            Raspberry Pi OS Trixie layout (a Pi kernel only): the supplied kernel, -M virt
  debian-raspi     Debian's raspi layout (root=LABEL=RASPIROOT), its own kernel, -M virt
  ubuntu           Ubuntu for Pi layout (linux-raspi only), the supplied kernel, -M virt (arm64)
  bookworm         Pi OS Bookworm (no cloud-init, init= firstboot, firstrun.sh): three power-ons,
                   -M virt, from the systemd base (arm64)
  pi-os-board      the Pi OS card on QEMU's board (raspi3b), its own kernel8.img (arm64)
  debian-raspi-board  the Debian raspi card on the board (arm64: raspi3b, armhf: raspi2b)
A first pi-os or ubuntu run also fetches the supplied kernel once: the figure says how long.

Usage: bench/boot.py [--fresh] [--arch arm64|armhf ...] [--mode MODE ...]
(needs root for a fresh base)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder.bases import debian as bases  # noqa: E402
from builder.qemu.boottest import BootOptions, boot_test  # noqa: E402
from builder.qemu.console import BootResult  # noqa: E402
from builder.qemu.supplied import supplied_kernel  # noqa: E402
from tests.boot_helpers import SUITES, base_image, device_image  # noqa: E402
from tests.pi_distros import debian_raspi, ubuntu_raspi  # noqa: E402
from tests.pi_layout import pi_board_image, pi_kernel_only, with_bookworm_first_boot  # noqa: E402

AGENT = "agent: {recheck_interval: 15, backoff_cap: 5, clock_sync_timeout: 10}\n"
BOARDS = {"arm64": "raspi3b", "armhf": "raspi2b"}
Card = Callable[[str, Path], Path]  # (arch, workdir) -> the card's base image


@dataclass(frozen=True)
class Mode:
    card: Card
    board: bool  # QEMU's Pi board for the arch, else -M virt
    archs: tuple[str, ...]
    what: str


MODES = {
    "generic": Mode(lambda a, w: base_image(a), False, ("arm64", "armhf"), "own base, own kernel"),
    "pi-os": Mode(
        lambda a, w: pi_kernel_only(base_image(a), w / "pi-os.img", a),
        False, ("arm64", "armhf"), "Pi OS layout, supplied kernel",
    ),
    "debian-raspi": Mode(
        lambda a, w: debian_raspi(base_image(a), w / "debian-raspi.img", w, a),
        False, ("arm64", "armhf"), "Debian raspi, own kernel",
    ),
    "ubuntu": Mode(
        lambda a, w: ubuntu_raspi(base_image(a), w / "ubuntu.img", w, a),
        False, ("arm64",), "Ubuntu for Pi, supplied kernel",
    ),
    "bookworm": Mode(
        lambda a, w: with_bookworm_first_boot(
            pi_kernel_only(bases.ensure_base(a, "bookworm", fmt="systemd"), w / "bookworm.img", a)
        ),
        False, ("arm64",), "Pi OS Bookworm, 3 power-ons",
    ),
    "pi-os-board": Mode(
        lambda a, w: pi_board_image(base_image(a), w / "board.img", w),
        True, ("arm64",), "Pi OS card, its kernel8.img",
    ),
    "debian-raspi-board": Mode(
        lambda a, w: debian_raspi(base_image(a), w / "debian-raspi.img", w, a),
        True, ("arm64", "armhf"), "Debian raspi card, its kernel",
    ),
}  # fmt: skip


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


def boot(arch: str, workdir: Path, name: str) -> BootResult:
    mode = MODES[name]
    if name in ("pi-os", "ubuntu"):
        start = time.monotonic()
        supplied_kernel(arch)
        print(f"  supplied kernel ready in {time.monotonic() - start:.1f} s (cached after a first fetch)")  # fmt: skip
    card = mode.card(arch, workdir)
    image, state = device_image(workdir, arch, AGENT, base_path=card)
    machine = BOARDS[arch] if mode.board else "virt"
    result = boot_test(BootOptions(image=image, timeout=1800, server_state=state, machine=machine))
    print(f"  boot-test {'passed' if result.passed else 'FAILED: ' + str(result.failure)}")
    for milestone, seconds in result.milestones:
        print(f"    {seconds:7.1f} s  {milestone}")
    print(f"  peak QEMU RSS {result.peak_rss_kib / 1024:.0f} MiB")
    return result


def table(arch: str, results: dict[str, BootResult]) -> None:
    """One row a mode; the ratio is against `generic` of this run, when it was measured."""
    yard = results.get("generic")
    yard_joined = dict(yard.milestones).get("joined") if yard else None
    print(f"\n{arch}: boot-to-joined, one run, one boot after another")
    print(f"  {'mode':<20} {'machine':<8} {'what':<32} {'kernel':>7} {'joined':>7}  vs generic")
    for name, result in results.items():
        marks = dict(result.milestones)
        machine = BOARDS[arch] if MODES[name].board else "virt"
        kernel = marks.get("kernel started")
        joined = marks.get("joined")
        ratio = f"{joined / yard_joined:.2f}x" if joined and yard_joined else "-"
        print(
            f"  {name:<20} {machine:<8} {MODES[name].what:<32} "
            f"{_s(kernel):>7} {_s(joined):>7}  {ratio}"
        )


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="also time a rebuild of the base")
    parser.add_argument("--arch", action="append", choices=("arm64", "armhf"))
    parser.add_argument("--mode", action="append", choices=tuple(MODES))
    args = parser.parse_args()
    for arch in args.arch or ["arm64"]:
        print(f"{arch}:")
        if args.fresh:
            print(f"  pifleet base, fresh   {base_seconds(arch, True):7.1f} s  (target < 600 s)")
        print(f"  pifleet base, cached  {base_seconds(arch, False):7.1f} s")
        results: dict[str, BootResult] = {}
        for name in args.mode or list(MODES):
            if arch not in MODES[name].archs:
                print(f" {name}: not for {arch}")
                continue
            print(f" {name}:")
            with tempfile.TemporaryDirectory(prefix="pifleet-bench-boot-") as tmp:
                results[name] = boot(arch, Path(tmp), name)
        table(arch, results)


if __name__ == "__main__":
    main()
