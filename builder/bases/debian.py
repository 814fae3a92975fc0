"""`pifleet base`: a QEMU-bootable Debian image laid out exactly like Raspberry Pi OS Trixie.

Trixie by default; `--suite bookworm` where a mirror's Trixie index does not verify
(the Debian mirror's armhf one, November 2026). Only the suite's own parts differ: its
python3.X, and how its cloud-init is told to read the seed in /boot/firmware (SUITES).

MBR; p1 FAT32 `bootfs` at sector 16384 (512 MiB, mounted at /boot/firmware,
with config.txt, cmdline.txt and a default NoCloud seed); p2 ext4 `rootfs`
without the 64bit feature; fstab and cmdline by PARTUUID; cloud-init seeded
from /boot/firmware as Pi OS configures it; /etc/machine-id `uninitialized`.
Unlike Pi OS it carries a generic Debian kernel (and a host-built initramfs) in
/boot of the root filesystem, so `pifleet boot-test` can boot it under `-M virt`.

Unlike Pi OS it also has no udev hwdb.bin (see bootstrap.skip_hwdb): building it
emulated costs minutes, and nothing a boot test checks needs it.

`--format systemd` builds the same Debian without cloud-init and with NetworkManager, as
Raspberry Pi OS Bookworm ships it: pifleet detects its seed format as `systemd` and writes
firstrun.sh, run once by `systemd.run=` on the kernel command line (no seed in bootfs, no
systemd-networkd: NetworkManager brings eth0 up by DHCP, or by a keyfile the seed writes).

Results are cached under the cache directory keyed by every input, so a
second request returns in seconds. Needs root (mmdebstrap --mode=root and
binfmt_misc); the image assembly itself is rootless.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from builder.bases import bootstrap, initramfs
from builder.disk.table import MBR_FAT32_LBA, MBR_LINUX, Partition, PartitionTable, write_table
from builder.util.cache import cache_dir
from builder.util.console import human_size
from builder.util.errors import UserError
from builder.util.run import run

log = logging.getLogger("pifleet.base")

RECIPE_VERSION = 7  # bump when anything below changes what a base contains
MIB = 1024 * 1024
BOOT_START = 16384  # sectors, as Raspberry Pi OS Trixie
BOOT_SIZE = 512 * MIB
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "systemd-sysv", "udev", "dbus", "kmod", "python3", "cloud-init", "openssl", "ca-certificates",
    "iproute2", "netbase", "systemd-timesyncd", "systemd-resolved", "openssh-server", "sudo",
    "e2fsprogs", "locales", "tzdata",  # as Pi OS: cloud-init's resizefs, locale and timezone
)  # fmt: skip
# What `--format` changes: cloudinit (the default, its cache key unchanged) or systemd.
FORMAT_PACKAGES = {
    "cloudinit": PACKAGES,
    "systemd": (*(p for p in PACKAGES if p != "cloud-init"), "network-manager"),
}
KERNELS = {"arm64": "linux-image-arm64", "armhf": "linux-image-armmp-lpae"}
DEFAULT_LOCALE = "en_US.UTF-8"  # pifleet's default `locale:` (Pi OS ships en_GB.UTF-8)

RASPBERRY_PI_CFG = """\
# configure cloud-init with NoCloud, as Raspberry Pi OS Trixie does
datasource_list: [ NoCloud, None ]
datasource:
  NoCloud:
    seedfrom: file:///boot/firmware
ssh_deletekeys: false
ssh_genkeytypes: []
"""
# cloud-init 22.4 (Bookworm) would read `seedfrom: file:///boot/firmware` as
# /boot/firmwaremeta-data, and reads no network-config from a seedfrom at all. Its NoCloud
# finds the same files by the label of the partition that holds them (mounted at
# /boot/firmware or not), network-config included.
BOOKWORM_CFG = """\
# configure cloud-init with NoCloud reading the seed in /boot/firmware (the bootfs partition)
datasource_list: [ NoCloud, None ]
datasource:
  NoCloud:
    fs_label: bootfs
ssh_deletekeys: false
ssh_genkeytypes: []
"""


@dataclass(frozen=True)
class Suite:
    python: str  # its python3.X, whose byte-compilation is moved to the host
    cloud_cfg: str  # /etc/cloud/cloud.cfg.d/99_raspberry-pi.cfg


SUITES = {
    "trixie": Suite("python3.13", RASPBERRY_PI_CFG),
    "bookworm": Suite("python3.11", BOOKWORM_CFG),
}
SSH_KEYS_UNIT = """\
[Unit]
Description=Regenerate SSH host keys
Before=ssh.service
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class Recipe:
    arch: str
    suite: str = "trixie"
    mirror: str = DEFAULT_MIRROR
    format: str = "cloudinit"  # the first-boot seed format the base understands

    @property
    def name(self) -> str:
        suffix = "" if self.format == "cloudinit" else f"-{self.format}"
        return f"pifleet-debian-{self.suite}-{self.arch}{suffix}"

    def key(self) -> str:
        facts: dict[str, object] = asdict(self)
        if facts.pop("format") != "cloudinit":  # the cloud-init base keeps its key (CI caches it)
            facts["format"] = self.format
        facts |= {
            "packages": FORMAT_PACKAGES[self.format],
            "kernel": KERNELS[self.arch],
            "recipe": RECIPE_VERSION,
        }
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def disk_id(self) -> str:
        return self.key()[:8]


def ensure_base(
    arch: str,
    suite: str = "trixie",
    mirror: str = DEFAULT_MIRROR,
    rebuild: bool = False,
    fmt: str = "cloudinit",
) -> Path:
    """The cached base image for these inputs, built first when absent (or with `rebuild`)."""
    if arch not in KERNELS:
        raise UserError(f"pifleet base: arch must be arm64 or armhf, got {arch!r}")
    if suite not in SUITES:
        raise UserError(f"pifleet base: --suite must be one of {', '.join(SUITES)}, got {suite!r}")
    if fmt not in FORMAT_PACKAGES:
        raise UserError(
            f"pifleet base: --format must be one of {', '.join(FORMAT_PACKAGES)}, got {fmt!r}"
        )
    recipe = Recipe(arch, suite, mirror, fmt)
    final = cache_dir("base") / recipe.key() / f"{recipe.name}.img"
    if final.exists() and not rebuild:
        log.info("base %s is cached: %s", recipe.name, final)
        return final
    if os.geteuid() != 0:
        raise UserError(
            "pifleet base needs root (mmdebstrap --mode=root, binfmt_misc): run it with sudo"
        )
    work = final.parent / f".build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.monotonic()
    try:
        image = build(recipe, work)
        image.replace(final)
    finally:
        if os.environ.get("PIFLEET_KEEP_BASE_WORK"):
            log.info("kept the work directory %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
            if not final.exists():  # a failed first build leaves no empty entry in the cache
                with contextlib.suppress(OSError):
                    final.parent.rmdir()
    log.info(
        "built %s (%s) in %.0f s",
        final,
        human_size(final.stat().st_size),
        time.monotonic() - started,
    )
    return final


def build(recipe: Recipe, work: Path) -> Path:
    rootfs, downloads = work / "rootfs", work / "debs"
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "1735689600"))  # 2025-01-01 by default
    spec = bootstrap.Bootstrap(
        recipe.suite,
        recipe.arch,
        recipe.mirror,
        FORMAT_PACKAGES[recipe.format],
        KERNELS[recipe.arch],
        SUITES[recipe.suite].python,
    )
    bootstrap.bootstrap(spec, rootfs, downloads)
    version = bootstrap.unpack_kernel(rootfs, downloads)
    log.info("kernel %s unpacked; building the initramfs on the host", version)
    busybox = bootstrap.busybox_binary(downloads, work / "busybox")
    initramfs.build(rootfs, version, busybox, rootfs / f"boot/initrd.img-{version}", epoch)
    (rootfs / "boot/initrd.img").symlink_to(f"initrd.img-{version}")
    log.info("byte-compiling Python %s", bootstrap.compile_python(rootfs, spec.python))
    bootstrap.skip_hwdb(rootfs)
    bootstrap.set_default_locale(rootfs, DEFAULT_LOCALE)
    cloud_cfg = SUITES[recipe.suite].cloud_cfg if recipe.format == "cloudinit" else None
    configure_rootfs(rootfs, recipe.disk_id, cloud_cfg)
    boot = work / "boot"
    write_boot_files(boot, recipe.disk_id, seed=recipe.format == "cloudinit")
    return assemble(work / f"{recipe.name}.img", rootfs, boot, recipe.disk_id, epoch)


def configure_rootfs(rootfs: Path, disk_id: str, cloud_cfg: str | None = RASPBERRY_PI_CFG) -> None:
    """What Raspberry Pi OS has that a plain Debian bootstrap lacks. `cloud_cfg` None: no
    cloud-init, NetworkManager instead (Bookworm), so no networkd either."""
    if cloud_cfg is not None:
        (rootfs / "etc/cloud/cloud.cfg.d/99_raspberry-pi.cfg").write_text(cloud_cfg)
    (rootfs / "etc/fstab").write_text(
        "proc                  /proc           proc    defaults          0       0\n"
        f"PARTUUID={disk_id}-01  /boot/firmware  vfat    defaults          0       2\n"
        f"PARTUUID={disk_id}-02  /               ext4    defaults,noatime  0       1\n"
    )
    (rootfs / "boot/firmware").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/hostname").write_text("raspberrypi\n")
    (rootfs / "etc/hosts").write_text(
        "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\traspberrypi\n"
    )
    (rootfs / "etc/machine-id").write_text("uninitialized\n")
    (rootfs / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    unit = rootfs / "etc/systemd/system/regenerate_ssh_host_keys.service"
    unit.write_text(SSH_KEYS_UNIT)
    _enable(rootfs, "regenerate_ssh_host_keys.service", "multi-user.target")
    if cloud_cfg is not None:
        _networkd(rootfs)
    for cache in ("var/cache/apt", "var/lib/apt/lists"):
        shutil.rmtree(rootfs / cache, ignore_errors=True)
        (rootfs / cache).mkdir(parents=True)
    (rootfs / "etc/resolv.conf").unlink(missing_ok=True)
    (rootfs / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")


def _networkd(rootfs: Path) -> None:
    _enable(rootfs, "systemd-networkd.service", "multi-user.target", "/usr/lib/systemd/system/")
    _enable(
        rootfs,
        "systemd-networkd-wait-online.service",
        "network-online.target",
        "/usr/lib/systemd/system/",
    )
    # Pi OS brings its network up with NetworkManager; this base uses systemd-networkd, whose
    # wait-online ignores links cloud-init marks `optional` (as Imager's network-config does)
    # and then stalls boot for its full 2 minutes. Here the wired link is what a boot waits for.
    online = rootfs / "etc/systemd/network/10-cloud-init-eth0.network.d/pifleet-online.conf"
    online.parent.mkdir(parents=True, exist_ok=True)
    online.write_text("[Link]\nRequiredForOnline=yes\n")


def _enable(rootfs: Path, unit: str, target: str, where: str = "/etc/systemd/system/") -> None:
    wants = rootfs / f"etc/systemd/system/{target}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / unit
    link.unlink(missing_ok=True)
    link.symlink_to(where + unit)


def write_boot_files(boot: Path, disk_id: str, seed: bool = True) -> None:
    """cmdline.txt and config.txt; with `seed`, the default NoCloud seed as Pi OS Trixie has."""
    boot.mkdir(parents=True)
    (boot / "cmdline.txt").write_text(
        f"console=serial0,115200 console=tty1 root=PARTUUID={disk_id}-02 rootfstype=ext4 fsck.repair=yes rootwait\n"
    )
    (boot / "config.txt").write_text(
        "# pifleet QEMU test base: laid out like Raspberry Pi OS Trixie; boots under QEMU -M virt\n"
        "# with the generic Debian kernel in the root filesystem's /boot (no Pi firmware here).\n"
        "[all]\narm_64bit=1\n"
    )
    if not seed:
        return
    (boot / "meta-data").write_text("instance-id: pifleet-base\n")
    (boot / "user-data").write_text(
        "#cloud-config\nhostname: raspberrypi\nmanage_etc_hosts: true\n"
    )
    (boot / "network-config").write_text(
        "network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n      optional: true\n"
    )


def assemble(image: Path, rootfs: Path, boot: Path, disk_id: str, epoch: int) -> Path:
    """Partition table, FAT and ext4 written straight into the image file (no loop devices)."""
    used = int(
        subprocess.run(
            ["du", "-sbx", str(rootfs)], capture_output=True, text=True, check=True
        ).stdout.split()[0]
    )
    root_size = -(-(used * 5 // 4 + 384 * MIB) // (4 * MIB)) * 4 * MIB
    root_start = BOOT_START * 512 + BOOT_SIZE
    with open(image, "wb") as f:
        f.truncate(root_start + root_size)
    table = PartitionTable(
        "mbr",
        disk_id,
        (
            Partition(1, BOOT_START * 512, BOOT_SIZE, f"0x{MBR_FAT32_LBA:02x}", f"{disk_id}-01"),
            Partition(2, root_start, root_size, f"0x{MBR_LINUX:02x}", f"{disk_id}-02"),
        ),
    )
    write_table(image, table)
    env = {
        "SOURCE_DATE_EPOCH": str(epoch),
        "MTOOLS_SKIP_CHECK": "1",
        "E2FSPROGS_FAKE_TIME": str(epoch),
    }
    run(["mkfs.vfat", "-F", "32", "-n", "bootfs", "-i", disk_id, "--invariant", "--offset", str(BOOT_START),
         str(image), str(BOOT_SIZE // 1024)], env=env, what="mkfs.vfat")  # fmt: skip
    run(
        ["mcopy", "-i", f"{image}@@{BOOT_START * 512}", *map(str, sorted(boot.iterdir())), "::/"],
        env=env,
        what="mcopy",
    )
    uuid = f"{disk_id}-0000-4000-8000-{disk_id}0000"
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^64bit", "-L", "rootfs", "-U", uuid,
         "-E", f"offset={root_start}", "-d", str(rootfs), str(image), f"{root_size // 1024}k"],
        env=env, what="mke2fs")  # fmt: skip
    log.info(
        "assembled %s: root filesystem %s (%s used)",
        image.name,
        human_size(root_size),
        human_size(used),
    )
    return image


def command(args: argparse.Namespace) -> int:
    path = ensure_base(
        args.arch, args.suite, args.mirror or DEFAULT_MIRROR, args.rebuild, args.format
    )
    if args.output:
        out = Path(args.output)
        from builder.disk.sparse import copy_file
        from builder.util.atomic import replace_when_done

        with replace_when_done(out, 0o644) as tmp:
            copy_file(path, tmp)
        path = out
    print(path)
    return 0
