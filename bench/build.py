#!/usr/bin/env python3
"""Benchmark `pifleet build` on a 2 GiB synthetic Pi base with a 64 MiB K3s-sized binary.

Prints, from one run:
- debugfs processes per golden build, counted by a PATH shim that logs each call
  (target, issue 22: <= 15);
- the build's wall time against the minimum work any build does, a sparse copy of the base
  (`cp --sparse=always`) plus the sha256 of the output (as SHA256SUMS needs it), each the
  best of 3 measured in the same run (target, issue 22: <= 1.10x);
- peak RSS of pifleet and every tool it ran (target, issue 2: < 150 MiB).
"""

from __future__ import annotations

import os
import shutil
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


def debugfs_shim(d: Path) -> tuple[dict[str, str], Path]:
    """An environment whose PATH starts with a `debugfs` that logs each call, and the log."""
    shims, log = d / "shims", d / "debugfs.log"
    shims.mkdir(exist_ok=True)
    real = shutil.which("debugfs") or shutil.which("debugfs", path="/usr/sbin:/sbin")
    (shims / "debugfs").write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec "{real}" "$@"\n')
    (shims / "debugfs").chmod(0o755)
    return {"PATH": f"{shims}:{os.environ['PATH']}"}, log


def build(d: Path, out: str, env: dict[str, str] | None = None) -> tuple[float, int]:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    subprocess.run(["sync"], check=True)  # no writeback of an earlier run in the timing
    argv = [sys.executable, "-m", "builder", "-q", "build", "fleet.yaml", "-o", out]
    return timed(argv, cwd=d, env=full)


def measure(d: Path, _prepared: float) -> None:
    k3s = d / "k3s-arm64"
    size = (d / "base.img").stat().st_size
    data = (d / "base.img").stat().st_blocks * 512
    env, log = debugfs_shim(d)
    build(d, "counted", env)
    calls = len(log.read_text().splitlines())
    shutil.rmtree(d / "counted")
    cp_times, sha_times, build_times = [], [], []
    rss = 0
    for i in range(3):
        subprocess.run(["sync"], check=True)
        t, _ = timed(["cp", "--sparse=always", str(d / "base.img"), str(d / f"cp{i}.img")])
        cp_times.append(t)
        (d / f"cp{i}.img").unlink()
        t, rss = build(d, f"out{i}")
        build_times.append(t)
        start = time.monotonic()
        sha256_file(d / f"out{i}" / "edge-fleet.img")
        sha_times.append(time.monotonic() - start)
        if i:
            shutil.rmtree(d / f"out{i}")
    cp_best, sha_best, build_best = min(cp_times), min(sha_times), min(build_times)
    least = cp_best + sha_best

    def best(times: list[float]) -> str:
        return f"(best of 3: {', '.join(f'{t:.2f}' for t in times)})"

    print(
        f"base image            {size / MIB:.0f} MiB ({data / MIB:.0f} MiB data), K3s binary {k3s.stat().st_size / MIB:.0f} MiB"
    )
    print(f"debugfs processes     {calls} per golden build (target <= 15)")
    print(f"cp --sparse=always    {cp_best:.2f} s {best(cp_times)}")
    print(f"sha256 of the output  {sha_best:.2f} s {best(sha_times)}")
    print(f"pifleet build         {build_best:.2f} s {best(build_times)}")
    print(f"ratio build / (cp + sha256)  {build_best / least:.2f}  (target <= 1.10)")
    print(
        f"ratio build / cp             {build_best / cp_best:.2f}  (issue 2's figure, target <= 1.5)"
    )
    print(
        f"peak RSS              {rss / 1024:.1f} MiB (largest of pifleet and its tools; target < 150)"
    )


if __name__ == "__main__":
    workdir.run(__file__, prepare, measure)
