"""A small initramfs built on the host: a static busybox for the target architecture, the
kernel's own modules needed to reach the root filesystem, and a 70-line /init.

Generating the initramfs inside an emulated chroot is what made a Debian arm64
rootfs take 34 minutes; this takes about a second and needs no emulation.
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from builder.util.errors import BuildError

# What the virt machine's root disk needs, by module name; whatever is built in is skipped.
# The Pi's hardware RNG (bcm2835-rng) is built into its kernel, and Pi OS's first boot reads
# /dev/hwrng as PID 1, before udev: under QEMU that is virtio-rng, loaded here.
ROOT_MODULES = ("virtio_pci", "virtio_mmio", "virtio_blk", "ext4", "crc32c_generic", "virtio_rng")

# The one /init, for pifleet's bases and for any image booted with the kernel pifleet supplies
# (builder/qemu/supplied.py): a Raspberry Pi OS, Ubuntu or Debian Pi image. It honours `init=`
# (as the Pi's kernel does, booting without an initramfs), finds the root by PARTUUID, LABEL
# or the Pi's SD card name (/dev/mmcblk0pN: on a board the card itself, under -M virt the
# first disk's partition N), and mounts the supplied kernel's modules when they are there
# (the read-only disk labelled pifleet-modules, which holds <version>/) at /lib/modules in
# the guest's root: the image is not written.
INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "pifleet initramfs: $*"; }
for m in $(cat /lib/modules/load-order); do
    insmod "/lib/modules/$m.ko" 2>/dev/null || say "insmod $m failed"
done
root=""; fstype=ext4; ro=ro; init=/sbin/init
set -f  # the command line's words are words, never file name patterns
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) root="${arg#root=}" ;;
        rootfstype=*) fstype="${arg#rootfstype=}" ;;
        init=*) init="${arg#init=}" ;;
        rw) ro=rw ;;
    esac
done
set +f
ext_label() { dd if="$1" bs=1 skip=1144 count=16 2>/dev/null | tr -d '\000'; }
disks() {
    for d in /sys/block/*; do
        case "${d##*/}" in loop*|ram*|zram*|mmcblk*boot*|mmcblk*rpmb) ;; *) echo "/dev/${d##*/}" ;; esac
    done
}
resolve() {
    case "$1" in
        PARTUUID=*)
            want="${1#PARTUUID=}"; sig="${want%-*}"; num=$(echo "${want##*-}" | sed 's/^0*//')
            for dev in $(disks); do
                s=$(dd if="$dev" bs=1 skip=440 count=4 2>/dev/null | hexdump -e '1/4 "%08x"')
                if [ "$s" = "$sig" ]; then
                    for p in "$dev$num" "${dev}p$num"; do [ -b "$p" ] && echo "$p" && return; done
                fi
            done ;;
        LABEL=*)
            for p in /dev/vd[a-z][0-9]* /dev/mmcblk[0-9]p[0-9]* /dev/sd[a-z][0-9]*; do
                [ -b "$p" ] && [ "$(ext_label "$p")" = "${1#LABEL=}" ] && echo "$p" && return
            done ;;
        /dev/mmcblk[0-9]p[0-9]*|/dev/sd[a-z][0-9]*)
            # the SD card itself on a board; under -M virt the first disk's partition N
            if [ -b "$1" ]; then echo "$1"; return; fi
            n=$(echo "$1" | sed 's/^.*[^0-9]//'); [ -b "/dev/vda$n" ] && echo "/dev/vda$n" ;;
        /dev/*) [ -b "$1" ] && echo "$1" ;;
    esac
}
i=0
while [ $i -lt 300 ]; do
    dev=$(resolve "$root")
    [ -n "$dev" ] && break
    sleep 0.1; i=$((i + 1))
done
if [ -z "$dev" ]; then say "root device $root not found"; exec sh; fi
say "root is $dev (cmdline.txt: root=$root)"
case "$root" in /dev/*) [ "$dev" = "$root" ] || say "under QEMU: root=$root is $dev (the first disk)";; esac
mount -o "$ro" -t "$fstype" "$dev" /root || { say "cannot mount $dev"; exec sh; }
version=$(uname -r)
for d in $(disks); do
    if [ "$(ext_label "$d")" = "pifleet-modules" ]; then
        mount -o ro -t ext4 "$d" /root/lib/modules &&
            say "under QEMU: /lib/modules is kernel $version's (supplied, read-only)" ||
            say "cannot mount the modules from $d"
        break
    fi
done
if [ ! -x "/root$init" ] && [ ! -L "/root$init" ]; then say "init=$init not in the image: /sbin/init"; init=/sbin/init; fi
[ "$init" = /sbin/init ] || say "starting init=$init"
umount /proc /sys
mount --move /dev /root/dev
exec switch_root /root "$init"
"""


def module_index(modules_dir: Path) -> tuple[dict[str, str], dict[str, list[str]], set[str]]:
    """(name -> relative path, relative path -> dependency paths, built-in names)."""
    paths: dict[str, str] = {}
    deps: dict[str, list[str]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[target] = rest.split()
        paths[_name(target)] = target
    builtin = set()
    builtin_file = modules_dir / "modules.builtin"
    if builtin_file.exists():
        builtin = {_name(line) for line in builtin_file.read_text().split()}
    return paths, deps, builtin


def _name(path: str) -> str:
    base = Path(path).name
    for suffix in (".xz", ".zst", ".gz"):
        base = base.removesuffix(suffix)
    return base.removesuffix(".ko").replace("-", "_")


def load_order(modules_dir: Path, wanted: tuple[str, ...] = ROOT_MODULES) -> list[str]:
    """Module files to insert, dependencies first (built-in and absent modules skipped)."""
    paths, deps, builtin = module_index(modules_dir)
    order: list[str] = []

    def visit(path: str) -> None:
        for dep in deps.get(path, []):
            visit(dep)
        if path not in order:
            order.append(path)

    for name in wanted:
        if name in builtin or name not in paths:
            continue
        visit(paths[name])
    return order


def build(
    rootfs: Path,
    kernel_version: str,
    busybox: Path,
    out: Path,
    epoch: int,
    init: str = INIT,
    modules: tuple[str, ...] = ROOT_MODULES,
) -> None:
    """Write a gzip'd newc cpio initramfs for `kernel_version` of `rootfs` to `out`."""
    modules_dir = rootfs / "usr/lib/modules" / kernel_version
    if not modules_dir.is_dir():
        modules_dir = rootfs / "lib/modules" / kernel_version
    order = load_order(modules_dir, modules)
    with tempfile.TemporaryDirectory(prefix="pifleet-initramfs-") as tmp:
        stage = Path(tmp)
        for d in ("bin", "dev", "proc", "sys", "root", "lib/modules"):
            (stage / d).mkdir(parents=True)
        shutil.copy(busybox, stage / "bin/busybox")
        (stage / "bin/busybox").chmod(0o755)
        (stage / "init").write_text(init)
        (stage / "init").chmod(0o755)
        names = []
        for rel in order:
            name = _name(rel)
            (stage / "lib/modules" / f"{name}.ko").write_bytes(_module_bytes(modules_dir / rel))
            names.append(name)
        (stage / "lib/modules/load-order").write_text("\n".join(names) + "\n")
        _cpio(stage, out, epoch)


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        proc = subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=False)
        if proc.returncode != 0:
            raise BuildError(f"cannot decompress {path.name}")
        return proc.stdout
    return data


def _cpio(stage: Path, out: Path, epoch: int) -> None:
    files = sorted(str(p.relative_to(stage)) for p in stage.rglob("*"))
    for name in files:
        os.utime(stage / name, (epoch, epoch), follow_symlinks=False)
    proc = subprocess.run(
        ["cpio", "--quiet", "-o", "-H", "newc", "--owner", "0:0", "--reproducible"],
        input=("\n".join([".", *files]) + "\n").encode(),
        cwd=stage,
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BuildError(f"cpio failed: {proc.stderr.decode(errors='replace').strip()}")
    with gzip.GzipFile(out, "wb", compresslevel=6, mtime=epoch) as f:
        f.write(proc.stdout)
