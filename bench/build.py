#!/usr/bin/env python3
"""Benchmark `pifleet build` on a 2 GiB synthetic Pi base with a 64 MiB K3s-sized binary.

Prints build wall time, peak RSS (of pifleet and every tool it ran), and the
ratio to `cp --sparse=always` of the same base measured in the same run.
Targets (issue 2): ratio <= 1.5, RSS < 150 MiB.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import workdir  # noqa: E402
from builder.disk.sparse import sha256_file  # noqa: E402
from tests.conftest import TEST_TOKEN, fleet_yaml  # noqa: E402
from tests.layouts import MIB, TRIXIE, elf_for, make_pi_image  # noqa: E402


def timed(argv: list[str], **kw: object) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of the command and every process it ran (wait4)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, **kw)  # type: ignore[call-overload]
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed with {proc.returncode}")
    return elapsed, usage.ru_maxrss


def prepare(d: Path) -> None:
    """Make the 2 GiB base, the 64 MiB binary and the config (in a child process: a forked
    child starts with its parent's peak RSS, which would pollute the measurement)."""
    root_size = 2048 * MIB - TRIXIE.boot_size - TRIXIE.boot_start * 512
    make_pi_image(d / "base.img", TRIXIE, "arm64", root_size=root_size, fill=1200 * MIB)
    with open(d / "k3s-arm64", "wb") as f:
        f.write(elf_for("arm64").read_bytes())
        for _ in range(16):
            f.write(os.urandom(4 * MIB))
    (d / "token").write_text(TEST_TOKEN)
    (d / "token").chmod(0o600)
    (d / "fleet.yaml").write_text(fleet_yaml(k3s="k3s: {binary: k3s-arm64}"))


def measure(d: Path, _prepared: float) -> None:
    k3s = d / "k3s-arm64"
    size = (d / "base.img").stat().st_size
    data = (d / "base.img").stat().st_blocks * 512
    subprocess.run(["sync"], check=True)
    cp_times, build_times = [], []
    rss = 0
    for i in range(3):
        subprocess.run(["sync"], check=True)  # no writeback of an earlier run in the timing
        t, _ = timed(["cp", "--sparse=always", str(d / "base.img"), str(d / f"cp{i}.img")])
        cp_times.append(t)
        (d / f"cp{i}.img").unlink()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run(["sync"], check=True)
        t, rss = timed(
            [sys.executable, "-m", "builder", "-q", "build", "fleet.yaml", "-o", f"out{i}"],
            cwd=d,
            env=env,
        )
        build_times.append(t)
    cp_best, build_best = min(cp_times), min(build_times)
    start = time.monotonic()
    sha256_file(d / "out0" / "edge-fleet.img")
    digest = time.monotonic() - start
    print(
        f"base image            {size / MIB:.0f} MiB ({data / MIB:.0f} MiB data), K3s binary {k3s.stat().st_size / MIB:.0f} MiB"
    )
    print(
        f"cp --sparse=always    {cp_best:.2f} s (best of 3: {', '.join(f'{t:.2f}' for t in cp_times)})"
    )
    print(
        f"pifleet build         {build_best:.2f} s (best of 3: {', '.join(f'{t:.2f}' for t in build_times)})"
    )
    print(f"ratio build / cp      {build_best / cp_best:.2f}  (target <= 1.5)")
    print(
        f"  of which: sha256 of the output image for SHA256SUMS alone takes {digest:.2f} s"
        f" ({digest / cp_best:.2f} x cp)"
    )
    print(
        f"peak RSS              {rss / 1024:.1f} MiB (largest of pifleet and its tools; target < 150)"
    )


if __name__ == "__main__":
    workdir.run(__file__, prepare, measure)
