"""Board emulation: QEMU's raspi3b and raspi2b boot the kernel the Pi firmware would pick.

`pifleet boot-test --machine raspi3b` (arm64) or `raspi2b` (armhf) boots the image's own
kernel, its initramfs and its device tree, chosen from its boot partition as the firmware
chooses them:

| rule | source |
|---|---|
| config.txt's `[all]` section and the model's own (`[pi3]`, `[pi2]`) apply; other filters' sections are skipped | raspberrypi/documentation config_txt/conditional.adoc |
| `kernel=`, else `kernel8.img` when `arm_64bit` is non-zero, else `kernel7.img` (Pi 2, 3) | config_txt/boot.adoc `kernel`, `arm_64bit` |
| `initramfs FILE[,FILE...] followkernel` (or an address): those files, concatenated | config_txt/boot.adoc `initramfs` |
| else `auto_initramfs=1`: the initramfs named after a standard kernel name (`kernel8.img` -> `initramfs8`, `kernel_2712.img` -> `initramfs_2712`), when present; a custom `kernel=` matches none | config.txt of Pi OS Trixie ("Automatically load initramfs files, if found") |
| `device_tree=`, else the model's default (`bcm2710-rpi-3-b.dtb`, `bcm2709-rpi-2-b.dtb`, Pi OS's names) | config_txt/boot.adoc `upstream_kernel` (the downstream names) |
| `upstream_kernel=1` (Debian's raspi-firmware writes it): the upstream name is preferred (`bcm2837-rpi-3-b.dtb`, `bcm2836-rpi-2-b.dtb`), the downstream one when the card has no such file | config_txt/boot.adoc `upstream_kernel` |
| `os_prefix=` (and the `upstream/` prefix `upstream_kernel` implies when that folder holds the kernel and device tree) is not followed: a card that sets `os_prefix` is refused with one line rather than booted with files the firmware would not pick | config_txt/boot.adoc `os_prefix` |

What a board needs under QEMU 7.2, and what boot-test sets for it on the QEMU command line
(never in the image): exactly 1 GiB and 4 CPUs; the image as the SD card through an overlay
whose size is a power of two (QEMU's SD card model requires it); the console on the mini
UART (raspi3b: `-serial null -serial stdio`, `console=ttyS1`) or the PL011 (raspi2b,
`ttyAMA0`); Ethernet through `-device usb-net` (a Pi 3's own is on USB too) with a
b8:27:eb address, so the interface is eth0; and BLACKLIST, drivers that probe the absent
hardware slowly (udev's coldplug took over 2 minutes and systemd's 90 s device timeout then
ended in emergency mode), with `systemd.default_device_timeout_sec` raised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from builder.disk.image import Image
from builder.util.errors import UserError

BOARDS = ("raspi3b", "raspi2b")
BOARD_ARCH = {"raspi3b": "arm64", "raspi2b": "armhf"}
SECTIONS = {"raspi3b": ("all", "pi3"), "raspi2b": ("all", "pi2")}
DEFAULT_DTB = {"raspi3b": "bcm2710-rpi-3-b.dtb", "raspi2b": "bcm2709-rpi-2-b.dtb"}
UPSTREAM_DTB = {"raspi3b": "bcm2837-rpi-3-b.dtb", "raspi2b": "bcm2836-rpi-2-b.dtb"}
BLACKLIST = (
    "cdc_subset",  # matches usb-net's USB ID too and can take the interface before cdc_ether
    "vc4", "v3d", "brcmfmac", "brcmutil", "hci_uart", "btbcm", "bluetooth", "snd_bcm2835",
    "bcm2835_v4l2", "bcm2835_codec", "bcm2835_isp", "bcm2835_mmal_vchiq", "vchiq",
    "raspberrypi_hwmon",
)  # fmt: skip
# QEMU's BCM2835 power manager resets the board the moment Linux arms its watchdog (any write
# of PM_RSTC's full-reset bit, qemu hw/misc/bcm2835_powermgt.c; Linux bcm2835_wdt_start makes
# it): Pi OS's 40-rpi-enable-watchdog.conf (RuntimeWatchdogSec) and its initramfs rpi_wd would
# end every boot. PID 1 gets a watchdog device that does not exist, and rpi_wd its own off
# switch. bcm2835_wdt itself stays: it is also the board's restart path.
NO_WATCHDOG = (
    "watchdog_disarm=0",  # raspberrypi-sys-mods initramfs-tools/scripts/init-top/rpi_wd
    "systemd.watchdog_device=/dev/pifleet-no-watchdog",  # systemd(1), since v236
    "systemd.watchdog_sec=off",  # systemd(1), newer systemd: RuntimeWatchdogSec= off
)
BOARD_WORDS = (
    "modprobe.blacklist=" + ",".join(BLACKLIST),
    "systemd.default_device_timeout_sec=300",
    *NO_WATCHDOG,
)
BOARD_CHANGES = (
    "the watchdog is not armed (QEMU's BCM2835 resets at once when it is): "
    + " ".join(NO_WATCHDOG),
    f"drivers for hardware QEMU lacks are not loaded: modprobe.blacklist={','.join(BLACKLIST)}",
    "device timeout 300 s (udev's coldplug is slow under emulation)",
)
_INITRAMFS = re.compile(r"^initramfs\s+(\S+)(?:\s+\S+)?\s*$")
AUTO_INITRAMFS = {
    "kernel.img": "initramfs", "kernel7.img": "initramfs7", "kernel7l.img": "initramfs7l",
    "kernel8.img": "initramfs8", "kernel_2712.img": "initramfs_2712",
}  # fmt: skip


@dataclass(frozen=True)
class BoardBoot:
    kernel: Path
    initrd: Path | None
    dtb: Path
    chosen: str  # what was picked, for the timeline: "kernel8.img, initramfs8, bcm2710-rpi-3-b.dtb"


def config_lines(config_txt: str, board: str) -> list[str]:
    """config.txt's lines that apply to `board`: `[all]` and the model's own sections."""
    wanted, current, lines = SECTIONS[board], "all", []
    for raw in config_txt.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip().lower()
            continue
        if current in wanted:
            lines.append(line)
    return lines


def pick(config_txt: str, board: str) -> tuple[str, str | None, str | None, bool]:
    """(kernel, initramfs or None, device_tree or None, auto_initramfs) from config.txt."""
    kernel = initramfs = dtb = None
    arm64, auto = False, False
    for line in config_lines(config_txt, board):
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if key == "kernel" and value:
            kernel = value
        elif key == "arm_64bit":
            arm64 = value not in ("0", "")
        elif key == "auto_initramfs":
            auto = value not in ("0", "")
        elif key == "device_tree" and value:
            dtb = value
        elif (m := _INITRAMFS.match(line)) is not None:
            initramfs = m.group(1)
    if kernel is None:
        kernel = "kernel8.img" if board == "raspi3b" and arm64 else "kernel7.img"
    return kernel, initramfs, dtb, auto


def default_dtb(config_txt: str, image: Image, board: str) -> str:
    """The device tree the firmware loads when config.txt names none: with `upstream_kernel=1`
    the upstream name when the card has it, else the downstream one."""
    lines = [line.replace(" ", "") for line in config_lines(config_txt, board)]
    upstream = any(ln.startswith("upstream_kernel=") and ln[16:] not in ("0", "") for ln in lines)
    if upstream and image.boot.read("/" + UPSTREAM_DTB[board]) is not None:
        return UPSTREAM_DTB[board]
    return DEFAULT_DTB[board]


def board_boot(image: Image, work: Path, board: str) -> BoardBoot:
    """The kernel, initramfs and device tree `board` boots from `image`, copied into `work`."""
    config = (image.boot.read("/config.txt") or b"").decode("utf-8", errors="replace")
    kernel, initramfs, dtb, auto = pick(config, board)
    prefix = [
        ln for ln in config_lines(config, board) if ln.replace(" ", "").startswith("os_prefix=")
    ]
    if prefix:
        raise UserError(
            f"{image.path}: config.txt sets {prefix[-1]}: --machine {board} does not follow "
            "os_prefix (boot-test the card under -M virt, or remove the line)"
        )
    named_dtb, dtb = dtb, dtb or default_dtb(config, image, board)
    if board == "raspi3b" and kernel in ("kernel7.img", "kernel7l.img", "kernel.img"):
        raise UserError(
            f"{image.path}: config.txt boots the 32-bit {kernel} (no arm_64bit=1): "
            "--machine raspi3b boots arm64 images"
        )
    if initramfs is None and auto and kernel in AUTO_INITRAMFS:
        named = AUTO_INITRAMFS[kernel]
        initramfs = named if image.boot.read("/" + named) is not None else None
    found = {}
    for what, names in (("kernel", kernel), ("initramfs", initramfs),
                        ("device tree", dtb)):  # fmt: skip
        if names is None:
            continue
        data = b""
        for name in names.split(","):
            part = image.boot.read("/" + name.lstrip("/"))
            if part is None:
                where = "device_tree=" if what == "device tree" and named_dtb else "config.txt"
                raise UserError(
                    f"{image.path}: the boot partition has no {name} ({what} that {where} "
                    f"picks for {board})"
                )
            data += part
        found[what] = work / ("board-" + Path(names.split(",")[0]).name)
        found[what].write_bytes(data)
    chosen = ", ".join(n for n in (kernel, initramfs, dtb) if n)
    return BoardBoot(found["kernel"], found.get("initramfs"), found["device tree"], chosen)


def sd_card_size(image_size: int) -> int:
    """The SD card's size: the next power of two (QEMU's SD model refuses any other)."""
    size = 1 << 20
    while size < image_size:
        size <<= 1
    return size
