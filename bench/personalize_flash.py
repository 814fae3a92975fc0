#!/usr/bin/env python3
"""Benchmark fleet personalization and `pifleet flash` (issue 5).

1. Per-device personalization: a golden image is built by `pifleet build` from a
   synthetic Trixie base with 200 devices, then
   - per-device images (`build --per-device`'s path: clone + boot seed), with new
     identities (Ed25519 host key, node password) and again with stored ones;
   - the boot seed alone, written in place into one card image (what `flash
     --config --device` does after writing the card).
   Prints ms per device and the extrapolated time for 1,000 devices (target < 50 ms).
2. Bytes written by `pifleet flash` onto a file standing in for the card, read from
   the kernel's I/O accounting of the flash process (/proc/<pid>/io of the exited,
   not yet reaped process, which includes every child it ran), relative to the
   mapped bytes of the image's .bmap (target <= 1.01x).

Prints figures; asserts nothing. BENCH_DIR chooses the scratch directory (its
filesystem decides whether clones are reflinks).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree as ET

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder.config.fleet import load  # noqa: E402
from builder.disk.sparse import copy_file, try_reflink  # noqa: E402
from builder.fleet.devicekeys import ensure_identity  # noqa: E402
from builder.fleet.personalize import apply, open_golden, personalize_fleet, secrets_for  # noqa: E402
from tests.conftest import TEST_TOKEN, fleet_yaml  # noqa: E402
from tests.layouts import MIB, TRIXIE, make_pi_image  # noqa: E402

DEVICES = 200
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}


def build_golden(d: Path, fill: int, devices: int) -> Path:
    """Synthetic base with `fill` bytes of incompressible data, built by the real CLI."""
    d.mkdir()
    make_pi_image(d / "base.img", TRIXIE, "arm64", root_size=fill + 64 * MIB, fill=fill)
    (d / "token").write_text(TEST_TOKEN + "\n")
    (d / "token").chmod(0o600)
    rows = "\n".join(
        f"  - {{hostname: pi-{i:04d}, labels: {{rack: r{i % 7}}}"
        + (f", address: 10.20.{i // 250}.{i % 250 + 1}/16, gateway: 10.20.255.254" if i % 2 else "")
        + "}"
        for i in range(1, devices + 1)
    )
    (d / "fleet.yaml").write_text(fleet_yaml(devices=f"devices:\n{rows}"))
    subprocess.run(
        [sys.executable, "-m", "builder", "-q", "build", "fleet.yaml"], cwd=d, env=ENV, check=True
    )
    (d / "base.img").unlink()
    return d / "out" / "edge-fleet.img"


def reflinks_here(d: Path) -> bool:
    with open(d / ".probe-a", "w+b") as a, open(d / ".probe-b", "wb") as b:
        a.write(b"x" * 4096)
        a.flush()
        works = try_reflink(a.fileno(), b.fileno())
    (d / ".probe-a").unlink()
    (d / ".probe-b").unlink()
    return works


def per_device(golden: Path, config_path: Path) -> None:
    config = load(config_path)
    devices = list(config.devices)
    card = golden.with_name("card.img")
    subprocess.run(["cp", "--sparse=always", str(golden), str(card)], check=True)

    def images(fresh: bool) -> None:
        for old in golden.parent.glob("pi-*.img"):
            old.unlink()
        if fresh:
            subprocess.run(["rm", "-rf", str(config.output.dir / "devices")], check=True)
        personalize_fleet(golden, config, devices)

    def seed_only() -> None:
        for device in devices:
            apply(open_golden(card), config, device, secrets_for(config, device))

    report("per-device images, new identities", [timed(images, True) for _ in range(3)])
    report("per-device images, stored ones", [timed(images, False) for _ in range(3)])
    report("boot seed only, in place", [timed(seed_only) for _ in range(3)])
    card.unlink()
    breakdown(golden, len(devices))


def timed(work: Callable[..., None], *args: object) -> float:
    """Seconds per device of one run over all DEVICES."""
    start = time.perf_counter()
    work(*args)
    return (time.perf_counter() - start) / DEVICES


def report(what: str, runs: list[float]) -> None:
    best = min(runs)
    print(
        f"  {what:<34} {best * 1000:5.1f} ms/device (best of 3: "
        f"{', '.join(f'{r * 1000:.1f}' for r in runs)}); 1,000 devices: {best * 1000:.0f} s"
        "  (target < 50 ms)"
    )


def breakdown(golden: Path, count: int) -> None:
    """The parts measured alone: cloning the image, making a new identity."""
    clones = golden.parent / "clones"
    clones.mkdir()
    start = time.perf_counter()
    for i in range(count):
        copy_file(golden, clones / f"{i}.img")
    clone = (time.perf_counter() - start) / count
    start = time.perf_counter()
    for i in range(count):
        ensure_identity(clones, f"host-{i}")
    identity = (time.perf_counter() - start) / count
    print(
        f"  of which: clone {clone * 1000:.1f} ms, new host key + node password {identity * 1000:.1f} ms;"
    )
    print("  the rest is the seed: external mtools/debugfs runs on the boot partition")
    subprocess.run(["rm", "-rf", str(clones)], check=True)


def mapped_bytes(bmap_file: Path) -> int:
    root = ET.parse(bmap_file).getroot()
    size, block = int(root.findtext("ImageSize") or 0), int(root.findtext("BlockSize") or 0)
    total = 0
    for node in root.iter("Range"):
        first, _, last = (node.text or "").strip().partition("-")
        total += min((int(last or first) + 1) * block, size) - int(first) * block
    return total


def flash_io(golden: Path, card: Path, *extra: str) -> dict[str, int]:
    """The kernel's I/O accounting of one `pifleet flash` run (and the children it ran)."""
    card.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "builder", "-q", "flash", str(golden), str(card), "--yes", *extra]
    proc = subprocess.Popen(argv, cwd=golden.parent.parent, env=ENV, stdout=subprocess.DEVNULL)
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: /proc still there
    fields = dict(
        line.split(": ") for line in Path(f"/proc/{proc.pid}/io").read_text().splitlines()
    )
    if proc.wait() != 0:
        raise SystemExit(f"{argv} failed with {proc.returncode}")
    return {key: int(value) for key, value in fields.items()}


def flash_bytes(golden: Path) -> None:
    mapped = mapped_bytes(golden.with_name(golden.name + ".bmap"))
    size = golden.stat().st_size
    print(f"  image {size / MIB:.0f} MiB, mapped per its .bmap {mapped / MIB:.1f} MiB ({mapped} B)")
    card = golden.with_name("card.img")
    for label, extra in (
        ("flash", ()),
        ("flash + personalize", ("--config", "fleet.yaml", "--device", "pi-0001")),
    ):
        io = flash_io(golden, card, *extra)
        print(
            f"  {label:<20} to storage (write_bytes) {io['write_bytes']:>11} B = "
            f"{io['write_bytes'] / mapped:.4f}x mapped; "
            f"write syscalls (wchar) {io['wchar']:>11} B = {io['wchar'] / mapped:.4f}x  (target <= 1.01x)"
        )
    card.unlink()


def main() -> None:
    with tempfile.TemporaryDirectory(
        prefix="pifleet-bench-", dir=os.environ.get("BENCH_DIR")
    ) as tmp:
        d = Path(tmp)
        print(
            f"scratch {d}: reflink clones {'available' if reflinks_here(d) else 'NOT available (sparse copies)'}"
        )
        golden = build_golden(d / "small", 0, DEVICES)
        data = golden.stat().st_blocks * 512
        print(
            f"personalization: golden image {golden.stat().st_size / MIB:.0f} MiB ({data / MIB:.1f} MiB data), {DEVICES} devices"
        )
        per_device(golden, golden.parent.parent / "fleet.yaml")
        print("flash, small image:")
        flash_bytes(golden)
        print("flash, image with 512 MiB of root filesystem data:")
        flash_bytes(build_golden(d / "large", 512 * MIB, 1))


if __name__ == "__main__":
    main()
