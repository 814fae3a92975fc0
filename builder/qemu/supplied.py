"""The kernel pifleet supplies for an image whose own kernel only a Raspberry Pi boots.

Raspberry Pi OS, Ubuntu for Pi and Debian's raspi images carry a Raspberry Pi kernel
(kernel8.img, vmlinuz-*-raspi) that does not boot under QEMU's `-M virt`. `boot-test` then
boots Debian's generic kernel for the image's architecture instead (KERNELS: arm64
`linux-image-arm64`, armhf `linux-image-armmp-lpae`), fetched and verified by apt
(builder/sources/debfetch.py) and cached by version under `$PIFLEET_CACHE/kernels/`:

- `vmlinuz`: the kernel;
- `modules.ext4`: its module tree, <version>/ as in /lib/modules, as an ext4 image. It is
  the guest's second disk, read-only; the initramfs mounts it at /lib/modules in the guest's
  root (hiding the image's modules, which are for a Pi kernel), so udev and modprobe find
  vfat, overlay, br_netfilter and nf_* as on a Pi. The image is not written;
- `initrd.img`: pifleet's initramfs (builder/bases/initramfs.py, the same /init as a base's):
  it finds the root the image's cmdline.txt names (PARTUUID, LABEL, or /dev/mmcblk0pN as
  Ubuntu's says: the first disk's partition N here), mounts the modules, and starts the
  image's own `init=` (Pi OS Bookworm's firstboot) or /sbin/init. Each of these steps prints
  one `pifleet initramfs:` line on the console.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from builder.bases import initramfs
from builder.bases.bootstrap import busybox_binary
from builder.bases.debian import DEFAULT_MIRROR, KERNELS
from builder.sources import debfetch
from builder.util.cache import cache_dir
from builder.util.errors import BuildError
from builder.util.run import run

log = logging.getLogger("pifleet.kernel")

SUITE = "trixie"  # Debian's stable: its generic kernel boots every image under -M virt
MODULES_LABEL = "pifleet-modules"
LAYOUT = 6  # bump when what a cached kernel directory holds changes
EPOCH = 1_700_000_000  # the initramfs's file times (reproducible)


@dataclass(frozen=True)
class SuppliedKernel:
    version: str
    vmlinuz: Path
    initrd: Path
    modules: Path  # ext4 image of /lib/modules/<version>, attached read-only


def supplied_kernel(arch: str, mirror: str = DEFAULT_MIRROR) -> SuppliedKernel:
    """The cached generic kernel for `arch`, fetched and prepared first when absent."""
    base = cache_dir("kernels")
    with _locked(base / f".{arch}.lock"):
        pointer = base / f"{arch}-{SUITE}.json"
        cached = _read_pointer(pointer, base)
        if cached is not None:
            return cached
        log.info("fetching Debian's generic %s kernel (%s, %s) for -M virt", arch, SUITE, mirror)
        for stale in base.glob(f".fetch-{arch}-*"):  # a killed fetch's (the lock is ours)
            shutil.rmtree(stale, ignore_errors=True)
        work = base / f".fetch-{arch}-{os.getpid()}"
        try:
            kernel = _prepare(arch, mirror, work, base)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        tmp = pointer.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": kernel.version, "layout": LAYOUT}) + "\n")
        tmp.replace(pointer)
        return kernel


def _read_pointer(pointer: Path, base: Path) -> SuppliedKernel | None:
    try:
        data = json.loads(pointer.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("layout") != LAYOUT:
        return None
    kernel = _paths(base, pointer.stem.split("-")[0], str(data.get("version")))
    if all(p.is_file() for p in (kernel.vmlinuz, kernel.initrd, kernel.modules)):
        return kernel
    return None


def _paths(base: Path, arch: str, version: str) -> SuppliedKernel:
    d = base / f"{arch}-{version}"
    return SuppliedKernel(version, d / "vmlinuz", d / "initrd.img", d / "modules.ext4")


def _prepare(arch: str, mirror: str, work: Path, base: Path) -> SuppliedKernel:
    debs = debfetch.download(
        [f"depends:{KERNELS[arch]}", "busybox-static"], arch, SUITE, mirror, work / "apt",
        work / "debs",
    )  # fmt: skip
    root = work / "root"
    root.mkdir()
    (root / "lib").symlink_to("usr/lib")  # Trixie's kernel ships /usr/lib/modules
    run(["dpkg-deb", "-x", str(debs[0]), str(root)], what=f"unpacking {debs[0].name}")
    versions = sorted(p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*"))
    if not versions:
        raise BuildError(f"{debs[0].name} has no /boot/vmlinuz-*")
    version = versions[-1]
    run(["depmod", "-b", str(root), version], what="depmod")
    modules = root / "usr/lib/modules" / version
    busybox = busybox_binary(work / "debs", work / "busybox")
    final = _paths(base, arch, version)
    stage = work / "out"
    stage.mkdir()
    shutil.copy(root / "boot" / f"vmlinuz-{version}", stage / "vmlinuz")
    initramfs.build(
        root, version, busybox, stage / "initrd.img", EPOCH
    )  # fmt: skip
    _modules_image(modules.parent, stage / "modules.ext4")
    shutil.rmtree(final.vmlinuz.parent, ignore_errors=True)
    stage.replace(final.vmlinuz.parent)
    log.info("kernel %s ready in %s", version, final.vmlinuz.parent)
    return final


def _modules_image(modules: Path, out: Path) -> None:
    """The directory `modules` (holding <version>/) as an ext4 image (no journal: it is only ever read), a little larger than
    what it holds."""
    size = sum(p.stat().st_size for p in modules.rglob("*") if p.is_file())
    mib = size // (1 << 20) * 5 // 4 + 32
    run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-L", MODULES_LABEL,
         "-d", str(modules), "-E", "root_owner=0:0", str(out), f"{mib}M"],
        what="mke2fs (the kernel's modules)",
    )  # fmt: skip


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One fetch at a time (two boot tests in parallel share the cache)."""
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
