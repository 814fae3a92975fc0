"""Synthetic images with the real layouts of Raspberry Pi OS and Ubuntu for Pi.

Built with the real tools (sfdisk, mkfs.vfat, mke2fs -d, mcopy) in seconds, a
few MB of data in mostly-sparse files. They copy what matters of the real
images: partition offsets and labels, cmdline.txt, fstab, os-release,
cloud-init configuration, machine-id, and a real ELF of the right architecture.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from builder.util.cache import cache_dir

MIB = 1024 * 1024
# Where tools/setup.sh put the test ELFs: $PIFLEET_CACHE/test-elf as the session started
# (tests that point PIFLEET_CACHE elsewhere later still find them).
CACHE = Path(os.environ.get("PIFLEET_TEST_ELF_DIR") or cache_dir("test-elf"))


def elf_for(arch: str) -> Path:
    """A real statically linked ELF (busybox) for arm64 or armhf."""
    path = CACHE / arch / "busybox"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run tools/setup.sh")
    return path


@dataclass(frozen=True)
class Layout:
    name: str
    boot_start: int  # sectors
    boot_size: int  # bytes
    boot_label: str
    root_label: str
    boot_mount: str
    os_release: str
    cmdline: str
    cloud_init: str | None  # path of the cloud.cfg.d file, None = no cloud-init
    cloud_cfg: str
    rpi_issue: bool
    machine_id: str
    # dpkg database (/var/lib/dpkg/status) and the files those packages ship that drive
    # format detection (builder/detect/osformat.py); () = no dpkg database at all.
    packages: tuple[tuple[str, str], ...] = ()
    markers: tuple[str, ...] = ()


BASE_PACKAGES = (("base-files", "13.8+rpt1"), ("dpkg", "1.22.21"), ("systemd", "257.8-1~deb13u2"))
SYS_MODS = (("raspberrypi-sys-mods", "20250926"), ("userconf-pi", "0.11"))
SYS_MODS_FILES = (
    "/usr/lib/raspberrypi-sys-mods/imager_custom",
    "/usr/lib/userconf-pi/userconf",
    "/usr/share/initramfs-tools/scripts/local-bottom/imager_fixup",
)
NM = (("network-manager", "1.52.1-1"),)
NM_FILES = ("/usr/sbin/NetworkManager",)


TRIXIE = Layout(
    name="trixie",
    boot_start=16384,
    boot_size=512 * MIB,
    boot_label="bootfs",
    root_label="rootfs",
    boot_mount="/boot/firmware",
    os_release='PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nNAME="Debian GNU/Linux"\n'
    'VERSION_ID="13"\nVERSION_CODENAME=trixie\nID=debian\n',
    cmdline="console=serial0,115200 console=tty1 root=PARTUUID={partuuid} rootfstype=ext4 "
    "fsck.repair=yes rootwait cfg80211.ieee80211_regdom=GB\n",
    cloud_init="/etc/cloud/cloud.cfg.d/99_raspberry-pi.cfg",
    cloud_cfg="datasource_list: [ NoCloud, None ]\ndatasource:\n  NoCloud:\n"
    "    seedfrom: file:///boot/firmware\nssh_deletekeys: false\nssh_genkeytypes: []\n",
    rpi_issue=True,
    machine_id="uninitialized\n",
    packages=BASE_PACKAGES
    + SYS_MODS
    + NM
    + (("cloud-init", "25.2-1+rpt1"), ("rpi-cloud-init-mods", "20250930")),
    markers=SYS_MODS_FILES + NM_FILES + ("/usr/bin/cloud-init",),
)
BOOKWORM = Layout(
    name="bookworm",
    boot_start=8192,
    boot_size=512 * MIB,
    boot_label="bootfs",
    root_label="rootfs",
    boot_mount="/boot/firmware",
    os_release='PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
    'VERSION_ID="12"\nVERSION_CODENAME=bookworm\nID=debian\n',
    cmdline="console=serial0,115200 console=tty1 root=PARTUUID={partuuid} rootfstype=ext4 "
    "fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n",
    cloud_init=None,
    cloud_cfg="",
    rpi_issue=True,
    machine_id="",
    packages=(("base-files", "12.4+rpt2"), ("systemd", "252.38-1~deb12u1"), *SYS_MODS, *NM),
    markers=SYS_MODS_FILES + NM_FILES,
)
UBUNTU = Layout(
    name="ubuntu",
    boot_start=2048,
    boot_size=512 * MIB,
    boot_label="system-boot",
    root_label="writable",
    boot_mount="/boot/firmware",
    os_release='PRETTY_NAME="Ubuntu 24.04.1 LTS"\nNAME="Ubuntu"\nVERSION_ID="24.04"\n'
    "VERSION_CODENAME=noble\nID=ubuntu\nID_LIKE=debian\n",
    cmdline="console=serial0,115200 multipath=off dwc_otg.lpm_enable=0 console=tty1 "
    "root=LABEL=writable rootfstype=ext4 rootwait fixrtc quiet splash\n",
    cloud_init="/etc/cloud/cloud.cfg.d/99-fake_cloud.cfg",
    cloud_cfg="datasource_list: [ NoCloud, None ]\ndatasource:\n  NoCloud:\n    fs_label: system-boot\n",
    rpi_issue=False,
    machine_id="",
    packages=(("base-files", "13ubuntu10"), ("cloud-init", "24.4-0ubuntu1~24.04.1")),
    markers=("/usr/bin/cloud-init",),
)
# Raspberry Pi OS Trixie with rpi-preseed instead of cloud-init (the package conflicts with it).
PRESEED = Layout(
    name="preseed",
    boot_start=TRIXIE.boot_start,
    boot_size=TRIXIE.boot_size,
    boot_label="bootfs",
    root_label="rootfs",
    boot_mount="/boot/firmware",
    os_release=TRIXIE.os_release,
    cmdline=TRIXIE.cmdline,
    cloud_init=None,
    cloud_cfg="",
    rpi_issue=True,
    machine_id="uninitialized\n",
    packages=BASE_PACKAGES + SYS_MODS + NM + (("rpi-preseed", "0.1.0"),),
    markers=SYS_MODS_FILES + NM_FILES + ("/usr/lib/rpi-preseed/rpi-preseed",),
)
LAYOUTS = {layout.name: layout for layout in (TRIXIE, BOOKWORM, UBUNTU, PRESEED)}


def dpkg_status(packages: tuple[tuple[str, str], ...], arch: str) -> str:
    """/var/lib/dpkg/status as dpkg writes it: one stanza per package, a blank line between."""
    stanzas = []
    for name, version in packages:
        stanzas.append(
            f"Package: {name}\nStatus: install ok installed\nPriority: optional\n"
            f"Section: admin\nInstalled-Size: 100\nMaintainer: Test <t@example.org>\n"
            f"Architecture: {'all' if name.startswith(('rpi-', 'raspberrypi')) else arch}\n"
            f"Version: {version}\nDescription: {name} (synthetic)\n .\n test layout\n"
        )
    # A removed package stays in the database with another status: it must not count.
    removed = "cloud-guest-utils" if "cloud-init" in dict(packages) else "cloud-init"
    stanzas.append(
        f"Package: {removed}\nStatus: deinstall ok config-files\n"
        "Architecture: all\nVersion: 22.4.2-1\nDescription: removed\n"
    )
    return "\n".join(stanzas)


def make_pi_image(
    path: Path,
    layout: Layout = TRIXIE,
    arch: str = "arm64",
    root_size: int = 48 * MIB,
    root_slack: int | None = None,
    disk_id: int = 0x5E3DA1F0,
    extra_partition: bool = False,
    gpt: bool = False,
    fill: int = 0,
    content: Path | None = None,
) -> Path:
    """Write a Pi-layout image to `path`. `root_slack`: make the root fs this much bigger than
    its content (a tight root filesystem forces the build to grow it). `fill`: bytes of
    incompressible data; `content`: a directory copied to /usr/share/content (real-ish files)."""
    work = path.parent / f".{path.name}.work"
    shutil.rmtree(work, ignore_errors=True)
    rootdir, bootdir = work / "root", work / "boot"
    partuuid = f"{disk_id:08x}-02"
    _populate_root(rootdir, layout, arch, partuuid)
    _fill(rootdir / "usr/share/filler", fill)
    if content is not None:
        shutil.copytree(content, rootdir / "usr/share/content", symlinks=True)
    _populate_boot(bootdir, layout, partuuid)
    boot_off = layout.boot_start * 512
    root_off = boot_off + layout.boot_size
    if root_slack is not None:
        used = sum(f.stat().st_size for f in rootdir.rglob("*") if f.is_file())
        root_size = max(8 * MIB, (used + root_slack + 4 * MIB) // MIB * MIB)
    tail = 8 * MIB if extra_partition else 0
    total = root_off + root_size + tail + (MIB if gpt else 0)
    with open(path, "wb") as f:
        f.truncate(total)
    _partition(path, layout, root_size, disk_id, extra_partition, gpt)
    _run(
        [
            "mkfs.vfat",
            "-F",
            "32",
            "-n",
            layout.boot_label,
            "-i",
            f"{disk_id:08x}",
            "--offset",
            str(layout.boot_start),
            str(path),
            str(layout.boot_size // 1024),
        ]
    )
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "SOURCE_DATE_EPOCH": "1700000000"}
    files = [str(p) for p in sorted(bootdir.iterdir())]
    _run(["mcopy", "-i", f"{path}@@{boot_off}", *files, "::/"], env=env)
    _run(
        [
            "mke2fs",
            "-q",
            "-F",
            "-t",
            "ext4",
            "-O",
            "^64bit,^orphan_file",
            "-L",
            layout.root_label,
            "-U",
            "3b614a3f-4a65-4480-876a-8a998e01ac9b",
            "-E",
            f"offset={root_off},hash_seed=0a5fd7e2-6b4f-4b0c-9b3c-0d1c2e3f4a5b",
            "-d",
            str(rootdir),
            str(path),
            f"{root_size // 1024}k",
        ],
        env={**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"},
    )
    shutil.rmtree(work)
    return path


def _populate_root(root: Path, layout: Layout, arch: str, partuuid: str) -> None:
    for d in (
        "etc/systemd/system/multi-user.target.wants",
        "usr/bin",
        "usr/lib",
        "usr/local/bin",
        "var/lib",
        "var/log",
        "boot/firmware",
        "root",
        "tmp",
    ):
        (root / d).mkdir(parents=True, exist_ok=True)
    for name in ("bin", "sbin", "lib"):
        (root / name).symlink_to(f"usr/{name}")
    (root / "usr/sbin").mkdir()
    (root / "usr/lib/os-release").write_text(layout.os_release)
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    shutil.copy(elf_for(arch), root / "usr/bin/busybox")
    shutil.copy(elf_for(arch), root / "usr/bin/env")
    (root / "usr/bin/sh").symlink_to("busybox")
    boot_src = f"PARTUUID={partuuid[:-3]}-01" if layout.name != "ubuntu" else "LABEL=system-boot"
    root_src = f"PARTUUID={partuuid}" if layout.name != "ubuntu" else "LABEL=writable"
    (root / "etc/fstab").write_text(
        "proc            /proc           proc    defaults          0       0\n"
        f"{boot_src}  {layout.boot_mount}  vfat    defaults          0       2\n"
        f"{root_src}  /               ext4    defaults,noatime  0       1\n"
    )
    (root / "etc/hostname").write_text("raspberrypi\n")
    # One zone besides UTC, for the timezone step's check (a stand-in, not a real TZif file).
    zone = root / "usr/share/zoneinfo/Europe/Berlin"
    zone.parent.mkdir(parents=True)
    zone.write_bytes(b"TZif2" + bytes(39))
    if layout.machine_id:
        (root / "etc/machine-id").write_text(layout.machine_id)
    if layout.rpi_issue:
        (root / "etc/rpi-issue").write_text("Raspberry Pi reference 2025-10-01\n")
    if layout.packages:
        status = root / "var/lib/dpkg/status"
        status.parent.mkdir(parents=True, exist_ok=True)
        status.write_text(dpkg_status(layout.packages, arch))
    for marker in layout.markers:
        path = root / marker.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n# stand-in\n")
        path.chmod(0o755)
    if layout.cloud_init:
        cfg = root / layout.cloud_init.lstrip("/")
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(layout.cloud_cfg)
        (root / "usr/bin/cloud-init").write_text("#!/usr/bin/python3\n# stand-in for cloud-init\n")
        (root / "usr/bin/cloud-init").chmod(0o755)


def _fill(directory: Path, size: int) -> None:
    """`size` bytes of incompressible data in 64 MiB files: a realistically full root filesystem."""
    if size <= 0:
        return
    directory.mkdir(parents=True)
    chunk = 64 * MIB
    for i in range(0, size, chunk):
        (directory / f"blob{i // chunk:04d}.bin").write_bytes(os.urandom(min(chunk, size - i)))


def _populate_boot(boot: Path, layout: Layout, partuuid: str) -> None:
    boot.mkdir(parents=True)
    (boot / "cmdline.txt").write_text(layout.cmdline.format(partuuid=partuuid))
    (boot / "config.txt").write_text("# synthetic\narm_64bit=1\ndtparam=audio=on\n")
    (boot / "start4.elf").write_bytes(b"\0" * 4096)
    if layout.cloud_init:
        (boot / "meta-data").write_text("instance-id: rpi-imager-default\n")
        (boot / "user-data").write_text("#cloud-config\n")
        (boot / "network-config").write_text("network:\n  version: 2\n")


def _partition(
    path: Path, layout: Layout, root_size: int, disk_id: int, extra: bool, gpt: bool
) -> None:
    boot_sectors = layout.boot_size // 512
    root_start = layout.boot_start + boot_sectors
    if gpt:
        lines = [
            "label: gpt",
            f"start={layout.boot_start}, size={boot_sectors}, type=U, name=boot",
            f"start={root_start}, size={root_size // 512}, type=L, name=root",
        ]
    else:
        lines = [
            "label: dos",
            f"label-id: 0x{disk_id:08x}",
            f"start={layout.boot_start}, size={boot_sectors}, type=c",
            f"start={root_start}, size={root_size // 512}, type=83",
        ]
    if extra:
        lines.append(f"start={root_start + root_size // 512}, size={8 * 2048}, type=83")
    _run(
        ["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(path)],
        input="\n".join(lines) + "\n",
    )


def _run(argv: list[str], input: str | None = None, env: dict[str, str] | None = None) -> None:
    subprocess.run(argv, input=input, text=True, check=True, capture_output=True, env=env)
