#!/usr/bin/env python3
"""Benchmark `pifleet flash IMAGE T1 ... TN` against N parallel `bmaptool copy` runs.

A golden image is built by `pifleet build` from a synthetic Trixie base whose root
filesystem holds SIZE MiB of incompressible data (--size, default 1536: about what a
Raspberry Pi OS Lite image maps), so the image maps a little more than that. Then, in one
run, ROUNDS rounds (--rounds, default 3, after a
warm-up round) of three sides, in an order that rotates from round to round:
- `bmaptool copy --bmap IMAGE.bmap IMAGE Ti`, N of them started at once; then, timed
  apart, the N cards it wrote read back and checked by pifleet's own `verify` (one process
  per card), so that the same work as pifleet's can be priced too;
- `pifleet flash IMAGE T1 ... TN --yes`: the N file targets written in parallel from one
  read of the image, then each read back and verified (builder/fleet/fanout.py, rounds.py);
- the same with `--config fleet.yaml`: each card also personalized as the next device the
  ledger has not seen flashed (a new identity each).

Prints, for each, the wall time and the aggregate throughput (N x mapped bytes / wall
seconds), medians of the rounds; the ratios pifleet / bmaptool of those medians (target,
with --config: >= 0.9x); and the peak RSS of pifleet and every tool it ran (os.wait4),
which must stay bounded, far below the mapped data (no whole-image buffer).

Both sides read the image from the page cache (it is read once before the warm-up round,
which also caches the image's sha256 as a station's first card does). pifleet also reads
every card back from storage (after POSIX_FADV_DONTNEED) and checks it, while `bmaptool
copy` does not verify the written card: the headline comparison favours bmaptool. Both
check what they read from the image against the bmap's checksums, and fsync the cards.

pifleet's fixed cost (start-up, reading and checking the fleet file, about 0.25 s) weighs
more on a smaller image: with --size 512 the --config ratio was 0.82x on this machine,
with the default 1.01x. Prints figures; asserts nothing; about 3 minutes. `python bench/flash_cards.py [N] [--size MIB]
[--rounds R]` (N cards, default 4); BENCH_DIR chooses the scratch directory.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder.outputs import bmap  # noqa: E402

MIB = 1024 * 1024
BMAPTOOL, PLAIN, CONFIG = "bmaptool", "pifleet", "pifleet --config"
SIDES = (BMAPTOOL, PLAIN, CONFIG)
READ_BACK = "read back"  # bmaptool's cards checked as pifleet checks its own; part of its side
BOTH = "bmaptool + read back"


def env_for(d: Path) -> dict[str, str]:
    """pifleet from this checkout, its cache (the image's digest) inside the scratch directory,
    and its bytecode cached there too (PYTHONPYCACHEPREFIX), as an installed pifleet's is and
    as Debian's bmaptool's is: a host that sets PYTHONDONTWRITEBYTECODE would otherwise make
    pifleet compile its modules on every run (about 50 ms) and bmaptool not."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PIFLEET_CACHE": str(d / "cache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(d / "pycache")
    return env


def prepare(d: Path, size: int, devices: int) -> None:
    """The base, the fleet file and the golden image (in a child process: a forked child
    starts with its parent's peak RSS, which would pollute the measurement)."""
    from tests.layouts import TRIXIE, make_pi_image

    # Imported by name, not followed by mypy: tests.conftest leads it into test helpers
    # that are not this script's to type-check.
    conftest = importlib.import_module("tests.conftest")
    make_pi_image(d / "base.img", TRIXIE, "arm64", root_size=size + 64 * MIB, fill=size)
    (d / "token").write_text(conftest.TEST_TOKEN + "\n")
    (d / "token").chmod(0o600)
    rows = "\n".join(f"  - {{hostname: pi-{i:04d}}}" for i in range(1, devices + 1))
    (d / "fleet.yaml").write_text(conftest.fleet_yaml(devices=f"devices:\n{rows}"))
    argv = [sys.executable, "-m", "builder", "-q", "build", "fleet.yaml"]
    done = subprocess.run(argv, cwd=d, env=env_for(d), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{argv} failed with {done.returncode}:\n{done.stderr}")
    (d / "base.img").unlink()


def run_all(argvs: list[list[str]], d: Path) -> tuple[float, int]:
    """Start every command at once; wall seconds until the last ended, and the largest peak
    RSS (KiB) of any of them and every process it ran (wait4)."""
    log = d / "run.log"
    subprocess.run(["sync"], check=True)  # no writeback of an earlier run in the timing
    with open(log, "w") as out:
        start = time.monotonic()
        procs = [
            subprocess.Popen(a, cwd=d, env=env_for(d), stdout=subprocess.DEVNULL, stderr=out)
            for a in argvs
        ]
        rss = 0
        for proc in procs:
            _pid, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            rss = max(rss, usage.ru_maxrss)
        elapsed = time.monotonic() - start
    for argv, proc in zip(argvs, procs, strict=True):
        if proc.returncode != 0:
            raise SystemExit(f"{argv} failed with {proc.returncode}:\n{log.read_text()[-2000:]}")
    return elapsed, rss


def one(side: str, d: Path, image: Path, cards: list[Path]) -> tuple[float, int]:
    """One side's run onto fresh `cards`: wall seconds and peak RSS (KiB)."""
    if side == READ_BACK:  # the cards bmaptool just wrote
        argvs = [[sys.executable, __file__, "--read-back", f"{image}.bmap", str(c)] for c in cards]
        return run_all(argvs, d)
    for card in cards:
        card.unlink(missing_ok=True)
    if side == BMAPTOOL:
        bmap_file = f"{image}.bmap"
        argvs = [["bmaptool", "-q", "copy", "--bmap", bmap_file, str(image), str(c)] for c in cards]
    else:
        argv = [sys.executable, "-m", "builder", "-q", "flash", str(image), *map(str, cards)]
        argvs = [argv + ["--yes"] + (["--config", "fleet.yaml"] if side == CONFIG else [])]
    result = run_all(argvs, d)
    for card in cards:
        if card.stat().st_size != image.stat().st_size:
            raise SystemExit(f"{side}: {card} has {card.stat().st_size} bytes, not the image's")
    return result


def read_back(bmap_file: Path, card: Path) -> None:
    """pifleet's read-back check of one card (cache dropped first), as `flash` runs it."""
    from builder.fleet.flash import verify

    verify(card, bmap.parse(bmap_file.read_bytes(), str(bmap_file)))


def measure(d: Path, n: int, rounds: int, prepared: float) -> None:
    image = d / "out" / "edge-fleet.img"
    block_map = bmap.parse(Path(f"{image}.bmap").read_bytes(), f"{image}.bmap")
    mapped = block_map.mapped_blocks * bmap.BLOCK
    (d / "cards").mkdir()
    cards = [d / "cards" / f"card{i}.img" for i in range(1, n + 1)]
    with open(image, "rb") as f:  # into the page cache, for both sides
        while f.read(8 * MIB):
            pass
    times: dict[str, list[float]] = {s: [] for s in (*SIDES, READ_BACK)}
    rss: dict[str, int] = dict.fromkeys(times, 0)
    for r in range(rounds + 1):  # round 0 warms up (and caches the image's sha256)
        for side in SIDES[r % 3 :] + SIDES[: r % 3]:
            for part in (side, READ_BACK) if side == BMAPTOOL else (side,):
                elapsed, peak = one(part, d, image, cards)
                rss[part] = max(rss[part], peak)
                if r:
                    times[part].append(elapsed)
    both = [b + v for b, v in zip(times[BMAPTOOL], times[READ_BACK], strict=True)]
    median = {s: statistics.median(t) for s, t in times.items()}
    median[BOTH] = statistics.median(both)

    def rate(side: str) -> float:
        return n * mapped / median[side] / MIB

    def line(label: str, side: str, runs: list[float]) -> None:
        listed = ", ".join(f"{t:.2f}" for t in runs)
        print(f"{label:<40}{median[side]:6.2f} s {rate(side):6.0f} MiB/s  (runs: {listed})")

    print(
        f"image      {block_map.size / MIB:.0f} MiB, {mapped / MIB:.1f} MiB mapped in "
        f"{len(block_map.ranges)} ranges (prepared in {prepared:.0f} s)"
    )
    print(
        f"{n} file cards; wall time and aggregate throughput (N x mapped / wall), medians of "
        f"{rounds} rounds after a warm-up, the sides alternated in this run"
    )
    line(f"{n} x bmaptool copy (parallel)", BMAPTOOL, times[BMAPTOOL])
    line("  its cards read back + verified", READ_BACK, times[READ_BACK])
    line("  copy + read back (per-round sums)", BOTH, both)
    line("pifleet flash (write + verify)", PLAIN, times[PLAIN])
    line("pifleet flash --config (+ personalize)", CONFIG, times[CONFIG])
    base = rate(BMAPTOOL)
    for label, ratio, why in (
        ("pifleet --config / bmaptool", rate(CONFIG) / base, "target >= 0.9x"),
        ("pifleet, no --config / bmaptool", rate(PLAIN) / base, "write + verify alone"),
        ("pifleet, no --config / bmaptool + read back", rate(PLAIN) / rate(BOTH), "same work"),
    ):
        print(f"ratio {label:<44}{ratio:5.2f}x  ({why})")
    print(
        f"peak RSS   pifleet flash {rss[PLAIN] / 1024:.1f} MiB, with --config {rss[CONFIG] / 1024:.1f} MiB"
        f" (and every tool it ran); one bmaptool {rss[BMAPTOOL] / 1024:.1f} MiB; a whole-image"
        f" buffer would be >= {mapped / MIB:.0f} MiB (target: bounded)"
    )
    print(
        "note: both sides read the image from the page cache; pifleet also reads every card back "
        "(fadvise DONTNEED) while bmaptool copy does not verify the card: this favours bmaptool"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("cards", nargs="?", type=int, default=4, help="N, cards per run")
    parser.add_argument("--size", type=int, default=1536, help="MiB of data in the image")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per side")
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--read-back", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    devices = args.cards * (args.rounds + 1)  # a new device for each personalized card
    if args.read_back:
        read_back(*args.read_back)
        return
    if args.prepare:
        prepare(args.prepare, args.size * MIB, devices)
        return
    with tempfile.TemporaryDirectory(
        prefix="pifleet-bench-", dir=os.environ.get("BENCH_DIR")
    ) as tmp:
        start = time.monotonic()
        child = [sys.executable, __file__, str(args.cards), "--size", str(args.size)]
        child += ["--rounds", str(args.rounds), "--prepare", tmp]
        subprocess.run(child, check=True)
        measure(Path(tmp), args.cards, args.rounds, time.monotonic() - start)


if __name__ == "__main__":
    main()
