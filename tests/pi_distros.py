"""Test images laid out as Debian's and Ubuntu's own images for the Raspberry Pi, made from a
copy of a pifleet base with debugfs and mtools (tests/pi_layout.py makes Raspberry Pi OS's).
No real image of either can be downloaded where the tests run."""

from __future__ import annotations

import subprocess
from pathlib import Path

from builder.bases.initramfs import ROOT_MODULES
from builder.disk import sparse
from builder.disk.image import Image
from builder.disk.table import read_table
from tests.pi_layout import BOARD_MODULES, _board_initramfs, _debugfs, _dtb, _generic_kernel, _ls

FIXTURES = Path(__file__).resolve().parent / "fixtures"


# Debian's own images for the Raspberry Pi (raspi.debian.net, built from Debian's image-specs;
# the older Debian/raspi3-image-spec on GitHub has the same shape):
RASPI_DTBS = {
    "arm64": ("bcm2837-rpi-3-b.dtb", "bcm2837-rpi-3-b-plus.dtb", "bcm2711-rpi-4-b.dtb"),
    "armhf": ("bcm2836-rpi-2-b.dtb", "bcm2837-rpi-3-b.dtb"),
}
RASPI_MODULES = {  # the SD card on both boards: sdhost (Pi 3), the Arasan SDHCI (Pi 2)
    "arm64": ("bcm2835", "sdhci_iproc"),
    "armhf": ("bcm2835", "sdhci_iproc"),
}


RASPI_SETTINGS = "/etc/default/raspi-firmware"  # ROOTPART, as image-specs' recipe sets it
RASPI_STANDIN = "/usr/local/sbin/raspi-firmware-standin"
RASPI_UNIT = "rpi-reconfigure-raspi-firmware.service"


def debian_raspi(base: Path, out: Path, tmp: Path, arch: str = "arm64") -> Path:
    """A copy of `base` at `out` laid out as Debian's image for the Raspberry Pi:

    | what | as Debian's raspi images have it |
    |---|---|
    | the FAT partition is labelled RASPIFIRM, the root RASPIROOT; fstab mounts both by LABEL= | image-specs' partitioning and fstab |
    | cmdline.txt: `console=tty0 console=ttyS1,115200 root=LABEL=RASPIROOT rw fsck.repair=yes net.ifnames=0 cma=64M rootwait` | raspi-firmware's z50-raspi-firmware hook (ROOTPART=LABEL=RASPIROOT) |
    | the Debian kernel stays in the root's /boot and is copied, with its initrd and the Pi device trees (upstream names), onto the FAT | the same hook |
    | config.txt: `arm_64bit=1` (arm64), `enable_uart=1`, `upstream_kernel=1`, `kernel=vmlinuz-<version>`, `initramfs initrd.img-<version> followkernel` | the same hook |
    | at first boot `rpi-reconfigure-raspi-firmware.service` (RequiredBy sysinit.target) rewrites cmdline.txt from /etc/default/raspi-firmware's ROOTPART and /etc/default/raspi-extra-cmdline, then disables itself: a stand-in does that (tests/fixtures/raspi-firmware-standin) | image-specs' unit, the raspi-firmware hook |

    So one card boots with its own kernel both under -M virt (the root's /boot/vmlinuz) and on
    a board (the kernel that config.txt names). Debian's initramfs-tools initrd (MODULES=most)
    has every driver; here pifleet's /init carries the virt disks' and both boards' SD
    drivers. The userland, and its cloud-init seed, are the base's."""
    sparse.copy_file(base, out)
    version, kernel, initrd = _generic_kernel(out)
    built = _board_initramfs(
        out, version, initrd, tmp, ROOT_MODULES + RASPI_MODULES[arch] + BOARD_MODULES
    )
    staged = tmp / f"raspi-{out.stem}"
    staged.mkdir()
    (staged / "initrd").write_bytes(built)
    fstab = (
        "proc            /proc           proc    defaults          0       0\n"
        "LABEL=RASPIFIRM /boot/firmware  vfat    rw                0       2\n"
        "LABEL=RASPIROOT /               ext4    rw                0       1\n"
    )
    (staged / "fstab").write_text(fstab)
    (staged / "raspi-firmware").write_text(
        'ROOTPART="LABEL=RASPIROOT"\nKERNEL_ARCH="' + arch + '"\n'
    )
    _debugfs(out, [
        "ssv volume_name RASPIROOT",
        f"write {staged / 'raspi-firmware'} {RASPI_SETTINGS}",
        f"write {FIXTURES / 'raspi-firmware-standin'} {RASPI_STANDIN}",
        f"sif {RASPI_STANDIN} mode 0100755",
        f"write {FIXTURES / RASPI_UNIT} /etc/systemd/system/{RASPI_UNIT}",
        "mkdir /etc/systemd/system/sysinit.target.requires",
        f"symlink /etc/systemd/system/sysinit.target.requires/{RASPI_UNIT} "
        f"/etc/systemd/system/{RASPI_UNIT}",
        f"rm /boot/initrd.img-{version}", f"write {staged / 'initrd'} /boot/initrd.img-{version}",
        "rm /etc/fstab", f"write {staged / 'fstab'} /etc/fstab",
    ])  # fmt: skip
    subprocess.run(
        ["mlabel", "-i", f"{out}@@{read_table(out).partitions[0].start}", "::RASPIFIRM"],
        env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}, check=True, capture_output=True,
    )  # fmt: skip
    opened = Image.open(out)
    opened.boot.stage(f"/vmlinuz-{version}", kernel)
    opened.boot.stage(f"/initrd.img-{version}", built)
    for name in RASPI_DTBS[arch]:
        opened.boot.stage(f"/{name}", _dtb(out, version, name))
    arm64 = "arm_64bit=1\n" if arch == "arm64" else ""
    opened.boot.stage("/config.txt", (
        f"# Do not modify this file! It is written by raspi-firmware.\n{arm64}enable_uart=1\n"
        f"upstream_kernel=1\nkernel=vmlinuz-{version}\n"
        f"initramfs initrd.img-{version} followkernel\n"
    ).encode())  # fmt: skip
    opened.boot.stage("/cmdline.txt", (
        b"console=tty0 console=ttyS1,115200 root=LABEL=RASPIROOT rw fsck.repair=yes "
        b"net.ifnames=0 cma=64M rootwait\n"
    ))  # fmt: skip
    opened.boot.flush()
    return out


# Ubuntu Server for Raspberry Pi (cdimage.ubuntu.com's preinstalled raspi images, built by
# livecd-rootfs): the linux-raspi kernel, which only a Pi boots, in the root's /boot and,
# copied by flash-kernel, on the FAT; cloud-init reads its NoCloud seed from the FAT.
UBUNTU_VERSION = {"arm64": "6.8.0-1017-raspi", "armhf": "6.8.0-1017-raspi"}
UBUNTU_CMDLINE = (
    "console=serial0,115200 multipath=off dwc_otg.lpm_enable=0 console=tty1 root={root} "
    "rootfstype=ext4 rootwait fixrtc quiet splash\n"
)
UBUNTU_OS_RELEASE = (
    'PRETTY_NAME="Ubuntu 24.04.1 LTS"\nNAME="Ubuntu"\nVERSION_ID="24.04"\n'
    'VERSION="24.04.1 LTS (Noble Numbat)"\nVERSION_CODENAME=noble\nID=ubuntu\nID_LIKE=debian\n'
    "UBUNTU_CODENAME=noble\n"
)
UBUNTU_CLOUD_CFG = (
    "datasource_list: [ NoCloud, None ]\ndatasource:\n  NoCloud:\n    fs_label: system-boot\n"
)


def ubuntu_raspi(
    base: Path, out: Path, tmp: Path, arch: str = "arm64", root: str = "LABEL=writable"
) -> Path:
    """A copy of `base` at `out` laid out as Ubuntu Server for the Raspberry Pi:

    | what | as Ubuntu's raspi images have it |
    |---|---|
    | the FAT is labelled `system-boot` (lower case, as mkfs.vfat -n writes it), the root `writable`; fstab mounts both by LABEL= | livecd-rootfs' raspi image hooks |
    | the kernel is the linux-raspi flavour: /boot/vmlinuz -> vmlinuz-<v>-raspi, modules in /usr/lib/modules/<v>-raspi, and no generic kernel | the linux-raspi packages |
    | flash-kernel has copied it to the FAT as `vmlinuz` and `initrd.img`; config.txt `kernel=vmlinuz`, `cmdline=cmdline.txt`, `initramfs initrd.img followkernel`, `arm_64bit=1` | flash-kernel's raspi boot config |
    | cmdline.txt `console=serial0,115200 ... root=LABEL=writable rootfstype=ext4 rootwait fixrtc quiet splash` (`root` may be given: older releases said `/dev/mmcblk0p2`) | the same |
    | cloud-init's NoCloud seed is read from the FAT by its label (`fs_label: system-boot`); /etc/os-release says Ubuntu 24.04 | the image's cloud.cfg.d, base-files |

    The kernel's bytes are the base's Debian kernel, renamed: what makes boot-test supply its
    own is the raspi flavour in the name, as with a real linux-raspi."""
    sparse.copy_file(base, out)
    version, kernel, initrd = _generic_kernel(out)
    raspi = UBUNTU_VERSION[arch]
    staged = tmp / f"ubuntu-{out.stem}"
    staged.mkdir()
    files = {
        "fstab": "LABEL=writable\t/\text4\tdiscard,errors=remount-ro\t0 1\n"
        "LABEL=system-boot\t/boot/firmware\tvfat\tdefaults\t0 1\n",
        "os-release": UBUNTU_OS_RELEASE,
        "cloud.cfg": UBUNTU_CLOUD_CFG,
    }
    for name, text in files.items():
        (staged / name).write_text(text)
    generic = [
        n
        for n in _ls(out, "/boot")
        if n.startswith(("vmlinuz", "initrd.img", "System.map", "config-"))
    ]
    _debugfs(out, [
        "ssv volume_name writable",
        *[f"rm /boot/{name}" for name in generic],
        f"ln /usr/lib/modules/{version} /usr/lib/modules/{raspi}",
        f"unlink /usr/lib/modules/{version}",
        "rm /etc/fstab", f"write {staged / 'fstab'} /etc/fstab",
        "rm /usr/lib/os-release", f"write {staged / 'os-release'} /usr/lib/os-release",
        "rm /etc/cloud/cloud.cfg.d/99_raspberry-pi.cfg",
        f"write {staged / 'cloud.cfg'} /etc/cloud/cloud.cfg.d/99-fake_cloud.cfg",
    ])  # fmt: skip
    (staged / "vmlinuz").write_bytes(kernel)
    (staged / "initrd.img").write_bytes(initrd)
    _debugfs(out, [
        f"write {staged / 'vmlinuz'} /boot/vmlinuz-{raspi}",
        f"write {staged / 'initrd.img'} /boot/initrd.img-{raspi}",
        f"symlink /boot/vmlinuz vmlinuz-{raspi}",
        f"symlink /boot/initrd.img initrd.img-{raspi}",
    ])  # fmt: skip
    _fat_label(out, "system-boot")
    opened = Image.open(out)
    opened.boot.stage("/vmlinuz", kernel)
    opened.boot.stage("/initrd.img", initrd)
    opened.boot.stage("/config.txt", (
        "[all]\nkernel=vmlinuz\ncmdline=cmdline.txt\ninitramfs initrd.img followkernel\n\n"
        "[pi4]\nmax_framebuffers=2\narm_boost=1\n\n[all]\ndtparam=audio=on\n"
        + ("arm_64bit=1\n" if arch == "arm64" else "")
        + "dtoverlay=vc4-kms-v3d\ndisable_overscan=1\n"
    ).encode())  # fmt: skip
    opened.boot.stage("/cmdline.txt", UBUNTU_CMDLINE.format(root=root).encode())
    opened.boot.flush()
    return out


def _fat_label(image: Path, label: str) -> None:
    """Label the FAT as mkfs.vfat -n does: the boot sector's and the root directory's label
    entry both in the given case (mlabel upper-cases the directory entry)."""
    start = read_table(image).partitions[0].start
    subprocess.run(
        ["mlabel", "-i", f"{image}@@{start}", f"::{label}"],
        env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}, check=True, capture_output=True,
    )  # fmt: skip
    upper = label.upper().encode().ljust(11) + b"\x08"
    with image.open("r+b") as f:
        f.seek(start)
        window = f.read(64 << 20)
        at = window.find(upper)
        assert at >= 0, f"{image}: no volume label entry {label.upper()!r} in the FAT"
        f.seek(start + at)
        f.write(label.encode().ljust(11))
