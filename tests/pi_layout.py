"""Test images with a Raspberry Pi kernel only, as Raspberry Pi OS ships them.

A pifleet base carries Debian's generic kernel in the root's /boot, which `-M virt` boots.
Raspberry Pi OS carries none: its kernels are on the boot partition (kernel8.img,
kernel_2712.img for arm64; kernel7l.img for armhf), its modules in the root at
/lib/modules/<version>+rpt-rpi-*, and /boot holds only the firmware mount point
(RPi-Distro/pi-gen stage1 `00-boot-files`, the raspberrypi-kernel packages). `pi_kernel_only`
turns a copy of a base into that layout: the generic kernel, its initrd and its module tree
leave the root (the modules are renamed to a Pi kernel's version, so nothing in the image
matches the supplied kernel), and the Pi kernel files appear on the boot partition with the
config.txt lines that pick them. The edits are debugfs and mtools on the image file.
"""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

from builder.disk import sparse
from builder.disk.image import Image
from builder.disk.table import read_table

PI_VERSIONS = {"arm64": "6.12.47+rpt-rpi-v8", "armhf": "6.12.47+rpt-rpi-v7l"}
PI_KERNELS = {"arm64": ("kernel8.img", "kernel_2712.img"), "armhf": ("kernel7l.img",)}


def pi_kernel_only(base: Path, out: Path, arch: str = "arm64") -> Path:
    """A copy of `base` at `out` laid out as Raspberry Pi OS: a Pi kernel only."""
    sparse.copy_file(base, out)
    opened = Image.open(out)
    boot_listing = _ls(out, "/boot")
    generic = [
        n for n in boot_listing if n.startswith(("vmlinuz", "initrd.img", "System.map", "config-"))
    ]
    versions = [n.removeprefix("vmlinuz-") for n in boot_listing if n.startswith("vmlinuz-")]
    kernel = opened.root.read(f"/boot/vmlinuz-{versions[0]}")
    assert kernel is not None, f"{base} has no generic kernel to take out"
    commands = [f"rm /boot/{name}" for name in generic]
    for version in versions:
        commands += [
            f"ln /usr/lib/modules/{version} /usr/lib/modules/{PI_VERSIONS[arch]}",
            f"unlink /usr/lib/modules/{version}",
        ]
    _debugfs(out, commands)
    with_pi_os_watchdog(out)
    opened = Image.open(out)
    for name in PI_KERNELS[arch]:
        opened.boot.stage(f"/{name}", kernel)  # a real kernel Image stands in for the Pi's
    config = (opened.boot.read("/config.txt") or b"").decode()
    opened.boot.stage(
        "/config.txt",
        (config.split("[all]")[0] + "[all]\narm_64bit=1\nauto_initramfs=1\n").encode()
        if arch == "arm64"
        else (config + "auto_initramfs=1\n").encode(),
    )
    opened.boot.flush()
    return out


def _root_spec(image: Path) -> str:
    return f"{image}?offset={read_table(image).partitions[1].start}"


def _ls(image: Path, directory: str) -> list[str]:
    done = subprocess.run(
        ["debugfs", "-R", f"ls -p {directory}", _root_spec(image)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    names = []
    for line in done.stdout.splitlines():
        fields = line.strip("/").split("/")
        if len(fields) >= 5 and fields[4] not in (".", ".."):
            names.append(fields[4])
    return names


def _debugfs(image: Path, commands: list[str]) -> None:
    done = subprocess.run(
        ["debugfs", "-w", "-f", "-", _root_spec(image)],
        input="\n".join(commands) + "\n", capture_output=True, text=True, check=False,
    )  # fmt: skip
    errors = [ln for ln in done.stderr.splitlines() if ln.strip() and not ln.startswith("debugfs ")]
    if done.returncode != 0 or errors:
        raise AssertionError(f"debugfs on {image}: {errors or done.returncode}")


# Pi OS turns on systemd's hardware watchdog (raspberrypi-sys-mods
# usr/lib/systemd/system.conf.d/40-rpi-enable-watchdog.conf: a runtime and a reboot timeout).
WATCHDOG_CONF = "/usr/lib/systemd/system.conf.d/40-rpi-enable-watchdog.conf"
WATCHDOG_SETTINGS = Path(__file__).resolve().parent / "fixtures/40-rpi-enable-watchdog.conf"


def with_pi_os_watchdog(image: Path) -> None:
    """`image`'s systemd arms the hardware watchdog at start, as Pi OS's does."""
    commands = (
        []
        if "system.conf.d" in _ls(image, "/usr/lib/systemd")
        else ["mkdir /usr/lib/systemd/system.conf.d"]
    )
    _debugfs(image, [*commands, f"write {WATCHDOG_SETTINGS} {WATCHDOG_CONF}",
                     f"sif {WATCHDOG_CONF} mode 0100644"])  # fmt: skip


FIRSTBOOT = "/usr/lib/raspberrypi-sys-mods/firstboot"
FIRSTBOOT_STANDIN = Path(__file__).resolve().parent / "fixtures/rpi-firstboot"


def with_bookworm_first_boot(image: Path) -> Path:
    """`image` with Raspberry Pi OS Bookworm's first boot: cmdline.txt ends in
    `init=/usr/lib/raspberrypi-sys-mods/firstboot` (pi-gen stage1 `cmdline.txt`), and that
    file is the test stand-in tests/fixtures/rpi-firstboot."""
    _debugfs(image, [
        "mkdir /usr/lib/raspberrypi-sys-mods",
        f"write {FIRSTBOOT_STANDIN} {FIRSTBOOT}",
        f"sif {FIRSTBOOT} mode 0100755",
        f"sif {FIRSTBOOT} uid 0",
        f"sif {FIRSTBOOT} gid 0",
    ])  # fmt: skip
    opened = Image.open(image)
    cmdline = (opened.boot.read("/cmdline.txt") or b"").decode().strip()
    opened.boot.stage("/cmdline.txt", f"{cmdline} quiet init={FIRSTBOOT}\n".encode())
    opened.boot.flush()
    return image


BOARD_DTB = {"raspi3b": "bcm2837-rpi-3-b.dtb"}
BOARD_MODULES = ("bcm2835", "ext4", "crc32c_generic")  # the SD card (sdhost) and the root


def pi_board_image(base: Path, out: Path, tmp: Path, board: str = "raspi3b") -> Path:
    """A copy of `base` at `out` that a Raspberry Pi board boots from its boot partition, as a
    Pi OS Trixie card: kernel8.img and initramfs8 (`auto_initramfs=1`) and a device tree named
    by `device_tree=`, the kernel's modules in the root under its own version. The kernel is
    Debian's from the base (QEMU's raspi3b runs Debian's upstream bcm2837 device tree); the
    initramfs is pifleet's foreign-root one, with the SD card's driver."""
    sparse.copy_file(base, out)
    version, kernel, initrd = _generic_kernel(out)
    dtb = _dtb(out, version, BOARD_DTB[board])
    built = _board_initramfs(out, version, initrd, tmp, BOARD_MODULES)
    generic = [n for n in _ls(out, "/boot") if n.startswith(("vmlinuz", "initrd.img"))]
    _debugfs(out, [f"rm /boot/{name}" for name in generic])
    with_pi_os_watchdog(out)
    opened = Image.open(out)
    opened.boot.stage("/kernel8.img", kernel)
    opened.boot.stage("/initramfs8", built)
    opened.boot.stage(f"/{BOARD_DTB[board]}", dtb)
    config = (opened.boot.read("/config.txt") or b"").decode().split("[all]")[0]
    opened.boot.stage(
        "/config.txt",
        f"{config}[all]\narm_64bit=1\nauto_initramfs=1\ndevice_tree={BOARD_DTB[board]}\n".encode(),
    )
    opened.boot.flush()
    return out


def _generic_kernel(image: Path) -> tuple[str, bytes, bytes]:
    """(version, vmlinuz, initrd.img) of the Debian kernel in `image`'s /boot."""
    version = next(
        n.removeprefix("vmlinuz-") for n in _ls(image, "/boot") if n.startswith("vmlinuz-")
    )
    opened = Image.open(image)
    kernel = opened.root.read(f"/boot/vmlinuz-{version}")
    initrd = opened.root.read(f"/boot/initrd.img-{version}")
    assert kernel and initrd, f"{image}: no kernel or initrd for {version}"
    return version, kernel, initrd


def _dtb(image: Path, version: str, name: str) -> bytes:
    """A device tree of Debian's kernel package: arm64's under broadcom/, armhf's at the top."""
    opened = Image.open(image)
    for where in (f"/usr/lib/linux-image-{version}/broadcom/{name}",
                  f"/usr/lib/linux-image-{version}/{name}"):  # fmt: skip
        data = opened.root.read(where)
        if data is not None:
            return data
    raise AssertionError(f"{image}: kernel {version} has no {name}")


def _board_initramfs(
    image: Path, version: str, initrd: bytes, tmp: Path, modules: tuple[str, ...]
) -> bytes:
    """pifleet's one /init with `modules` of the image's own kernel and the busybox of its
    current initrd (builder/bases/initramfs.py)."""
    from builder.bases import initramfs

    work = tmp / f"initramfs-{image.stem}"
    root_modules = work / "root/usr/lib/modules"
    root_modules.mkdir(parents=True)
    subprocess.run(
        ["debugfs", "-R", f"rdump /usr/lib/modules/{version} {root_modules}", _root_spec(image)],
        check=True, capture_output=True,
    )  # fmt: skip
    unpacked = work / "unpacked"
    unpacked.mkdir()
    subprocess.run(["cpio", "-id", "--quiet", "bin/busybox"], input=gzip.decompress(initrd),
                   cwd=unpacked, check=True)  # fmt: skip
    built = work / "initrd"
    initramfs.build(work / "root", version, unpacked / "bin/busybox", built, 1_700_000_000,
                    modules=modules)  # fmt: skip
    return built.read_bytes()
