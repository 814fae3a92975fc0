#!/usr/bin/env python3
"""Benchmark compressed bases in and compressed images out (issue 4).

(a) `pifleet build` from a 2 GiB synthetic base given as `.img.xz` (decompress into a fresh
    cache + customize + outputs) vs `xz -dc -T0 base.img.xz > /dev/null` of the same file,
    measured in the same run. Target: ratio <= 1.3.
(b) Compressing the built image to `.img.zst` with pifleet's own code path
    (builder.sources.compress.compress) vs the `zstd -T0` CLI on the same image: throughput of each
    (apparent image bytes per second) and the ratio. Target: >= 0.9.

The base's root filesystem holds a few hundred MiB of real files copied from this host's
/usr (libraries, binaries, text), so xz and zstd see realistically compressible data.
Prints figures; asserts nothing. BENCH_DIR chooses where the temporary files go.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import workdir  # noqa: E402
from builder.sources.compress import compress  # noqa: E402
from tests.conftest import TEST_TOKEN, fleet_yaml  # noqa: E402
from tests.layouts import MIB, TRIXIE, make_pi_image  # noqa: E402

CONTENT = 512 * MIB  # real-ish file content in the root filesystem
SOURCES = (Path("/usr/lib"), Path("/usr/share"), Path("/usr/bin"))


def timed(argv: list[str], **kw: object) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of the command and its children, after a sync
    (earlier writeback is not counted). CPU time is the steadier figure on a shared machine."""
    subprocess.run(["sync"], check=True)
    cpu = _children_cpu()
    start = time.monotonic()
    subprocess.run(argv, check=True, **kw)  # type: ignore[call-overload]
    return time.monotonic() - start, _children_cpu() - cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def gather_content(dest: Path, budget: int) -> int:
    """Copy regular files from this host's /usr into `dest` until `budget` bytes; the total."""
    total = 0
    for top in SOURCES:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                src = Path(dirpath) / name
                if src.is_symlink() or not src.is_file():
                    continue
                size = src.stat().st_size
                if size == 0 or total + size > budget:
                    continue
                target = dest / src.relative_to("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    shutil.copyfile(src, target)
                except OSError:
                    continue
                total += size
                if total >= budget - MIB:
                    return total
    return total


def prepare(d: Path) -> None:
    """The 2 GiB base with real-ish content, compressed with `xz -T0`; the token and config."""
    content = d / "content"
    gathered = gather_content(content, CONTENT)
    root_size = 2048 * MIB - TRIXIE.boot_size - TRIXIE.boot_start * 512
    make_pi_image(d / "base.img", TRIXIE, "arm64", root_size=root_size, content=content)
    shutil.rmtree(content)
    subprocess.run(["xz", "-T0", "--keep", str(d / "base.img")], check=True)
    (d / "content-bytes").write_text(str(gathered))
    (d / "token").write_text(TEST_TOKEN)
    (d / "token").chmod(0o600)
    (d / "fleet.yaml").write_text(fleet_yaml(base="base: {path: base.img.xz}"))


def build_from_xz(d: Path) -> dict[str, tuple[float, float]]:
    """xz -dc -T0 > /dev/null before and after pifleet build with a fresh cache, then the
    build again with the decompressed base cached."""
    figures = {}
    with open(os.devnull, "wb") as null:
        figures["xz before"] = timed(["xz", "-dc", "-T0", str(d / "base.img.xz")], stdout=null)
        env = {**os.environ, "PYTHONPATH": str(REPO), "PIFLEET_CACHE": str(d / "cache")}
        argv = [sys.executable, "-m", "builder", "-q", "build", "fleet.yaml"]
        figures["cold"] = timed([*argv, "-o", "out"], cwd=d, env=env)
        figures["xz after"] = timed(["xz", "-dc", "-T0", str(d / "base.img.xz")], stdout=null)
        figures["warm"] = timed([*argv, "-o", "out-warm"], cwd=d, env=env)
    return figures


def zstd_cli(image: Path, dest: Path) -> float:
    with open(dest, "wb") as out:
        return timed(["zstd", "-T0", "-q", "-c", str(image)], stdout=out)[0]


def zstd_figures(image: Path, d: Path) -> tuple[float, float, int, int]:
    """Seconds of the zstd -T0 CLI (mean of a run before and one after) and of pifleet's
    compress(), and their output sizes."""
    cli_out, ours = d / "cli.img.zst", d / "pifleet.img.zst"
    before = zstd_cli(image, cli_out)
    subprocess.run(["sync"], check=True)
    start = time.monotonic()
    compress(image, ours, "img.zst")
    pifleet = time.monotonic() - start
    after = zstd_cli(image, cli_out)
    return (before + after) / 2, pifleet, cli_out.stat().st_size, ours.stat().st_size


def report_build(d: Path) -> None:
    f = build_from_xz(d)
    xz = (f["xz before"][0] + f["xz after"][0]) / 2
    xz_cpu = (f["xz before"][1] + f["xz after"][1]) / 2
    print(
        f"xz -dc -T0 >/dev/null {xz:.2f} s, {xz_cpu:.2f} s CPU "
        f"(mean of {f['xz before'][0]:.2f} s before and {f['xz after'][0]:.2f} s after the build)"
    )
    print(
        f"pifleet build (.xz)   {f['cold'][0]:.2f} s, {f['cold'][1]:.2f} s CPU "
        "(decompress into a fresh cache + customize + .bmap, SHA256SUMS)"
    )
    print(
        f"ratio build / xz -dc  {f['cold'][0] / xz:.2f} wall, {f['cold'][1] / xz_cpu:.2f} CPU"
        "  (target <= 1.3)"
    )
    print(
        f"  of which: the same build with the base already decompressed takes "
        f"{f['warm'][0]:.2f} s ({f['warm'][1]:.2f} s CPU)"
    )


def report_zstd(d: Path) -> None:
    image = d / "out" / "edge-fleet.img"
    size = image.stat().st_size
    cli, ours, cli_size, our_size = zstd_figures(image, d)
    print(
        f"zstd -T0 CLI          {cli:.2f} s, {size / cli / MIB:.0f} MiB/s, "
        f"{cli_size / MIB:.0f} MiB out"
    )
    print(
        f"pifleet .img.zst      {ours:.2f} s, {size / ours / MIB:.0f} MiB/s, "
        f"{our_size / MIB:.0f} MiB out"
    )
    print(f"throughput ratio      {cli / ours:.2f}  (pifleet / zstd CLI; target >= 0.9)")


def measure(d: Path, prepared: float) -> None:
    base, xz_file = d / "base.img", d / "base.img.xz"
    print(
        f"base image            {base.stat().st_size / MIB:.0f} MiB "
        f"({base.stat().st_blocks * 512 / MIB:.0f} MiB data, of which "
        f"{int((d / 'content-bytes').read_text()) / MIB:.0f} MiB host files); "
        f".img.xz {xz_file.stat().st_size / MIB:.0f} MiB (made in {prepared:.0f} s)"
    )
    base.unlink()
    report_build(d)
    report_zstd(d)


if __name__ == "__main__":
    workdir.run(__file__, prepare, measure)
