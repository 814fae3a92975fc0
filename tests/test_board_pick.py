"""What a Raspberry Pi board boots from a card (builder/qemu/board.py), read from config.txt
as the firmware reads it (raspberrypi/documentation `config_txt/boot.adoc`, `conditional.adoc`):
the `[all]` section and the model's own, the others skipped; bad cards are one line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from builder.disk.image import Image
from builder.qemu.board import BLACKLIST, board_boot, config_lines, pick, sd_card_size
from builder.qemu.vm import BOARD_MACHINES, MACHINES, Machine, kernel_command_line
from builder.util.errors import UserError

PI_OS_TRIXIE = """\
# For more options and information see http://rptl.io/configtxt
dtparam=audio=on
camera_auto_detect=1
auto_initramfs=1
arm_64bit=1
[cm4]
otg_mode=1
[pi4]
kernel=kernel_2712.img
[all]
[pi3]
device_tree=bcm2710-rpi-3-b-plus.dtb
"""


def test_pi_os_trixie_on_a_pi3() -> None:
    assert pick(PI_OS_TRIXIE, "raspi3b") == (
        "kernel8.img", None, "bcm2710-rpi-3-b-plus.dtb", True
    )  # fmt: skip
    assert "kernel=kernel_2712.img" not in config_lines(PI_OS_TRIXIE, "raspi3b")


def test_raspi2b_takes_pi2_sections_and_the_32_bit_kernel() -> None:
    config = "[pi2]\nkernel=zImage\ninitramfs initrd.img-6.1 followkernel\n[pi3]\nkernel=nope\n"
    assert pick(config, "raspi2b") == ("zImage", "initrd.img-6.1", None, False)
    assert pick("", "raspi2b")[0] == "kernel7.img"


def test_comments_and_blank_lines_are_nothing() -> None:
    assert config_lines("  # kernel=x\n\narm_64bit=1 # on\n", "raspi3b") == ["arm_64bit=1"]


@pytest.mark.parametrize(
    ("size", "card"), [(1, 1 << 20), (1 << 30, 1 << 30), ((1 << 30) + 1, 1 << 31)]
)
def test_the_sd_card_is_a_power_of_two(size: int, card: int) -> None:
    assert sd_card_size(size) == card


def card(make_image: Callable[..., Path], config: str, files: dict[str, bytes]) -> Image:
    image = Image.open(make_image("card.img"))
    image.boot.stage("/config.txt", config.encode())
    for name, data in files.items():
        image.boot.stage("/" + name, data)
    image.boot.flush()
    return Image.open(image.path)


def test_auto_initramfs_is_named_after_the_kernel(
    make_image: Callable[..., Path], tmp_path: Path
) -> None:
    files = {"kernel8.img": b"K", "initramfs8": b"I", "bcm2710-rpi-3-b.dtb": b"D"}
    picked = board_boot(
        card(make_image, "arm_64bit=1\nauto_initramfs=1\n", files), tmp_path, "raspi3b"
    )
    assert (picked.kernel.read_bytes(), picked.dtb.read_bytes()) == (b"K", b"D")
    assert picked.initrd is not None and picked.initrd.read_bytes() == b"I"
    assert picked.chosen == "kernel8.img, initramfs8, bcm2710-rpi-3-b.dtb"


def test_a_custom_kernel_name_matches_no_initramfs_and_a_list_is_concatenated(
    make_image: Callable[..., Path], tmp_path: Path
) -> None:
    files = {
        "k.img": b"K",
        "initramfs8": b"I",
        "a.cpio": b"A",
        "b.cpio": b"B",
        "bcm2710-rpi-3-b.dtb": b"D",
    }
    custom = card(make_image, "arm_64bit=1\nkernel=k.img\nauto_initramfs=1\n", files)
    assert board_boot(custom, tmp_path, "raspi3b").initrd is None
    listed = card(
        make_image, "arm_64bit=1\nkernel=k.img\ninitramfs a.cpio,b.cpio 0x00800000\n", files
    )
    picked = board_boot(listed, tmp_path, "raspi3b")
    assert picked.initrd is not None and picked.initrd.read_bytes() == b"AB"


DEBIAN_RASPI = """\
# Do not modify this file!
arm_64bit=1
enable_uart=1
upstream_kernel=1
kernel=vmlinuz-6.12.57+deb13-arm64
initramfs initrd.img-6.12.57+deb13-arm64 followkernel
"""


def test_upstream_kernel_prefers_the_upstream_device_tree_name(
    make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """Debian's raspi images: `upstream_kernel=1`, and the card has both names."""
    files = {
        "vmlinuz-6.12.57+deb13-arm64": b"K",
        "initrd.img-6.12.57+deb13-arm64": b"I",
        "bcm2837-rpi-3-b.dtb": b"U",
        "bcm2710-rpi-3-b.dtb": b"D",
    }
    picked = board_boot(card(make_image, DEBIAN_RASPI, files), tmp_path, "raspi3b")
    assert picked.dtb.read_bytes() == b"U"
    assert picked.chosen == (
        "vmlinuz-6.12.57+deb13-arm64, initrd.img-6.12.57+deb13-arm64, bcm2837-rpi-3-b.dtb"
    )
    without = card(make_image, DEBIAN_RASPI.replace("upstream_kernel=1", ""), files)
    assert board_boot(without, tmp_path, "raspi3b").dtb.read_bytes() == b"D"


def test_upstream_kernel_falls_back_to_the_downstream_name(
    make_image: Callable[..., Path], tmp_path: Path
) -> None:
    files = {"kernel7.img": b"K", "bcm2709-rpi-2-b.dtb": b"D"}
    picked = board_boot(card(make_image, "upstream_kernel=1\n", files), tmp_path, "raspi2b")
    assert picked.dtb.read_bytes() == b"D"


def test_os_prefix_is_refused_in_one_line(make_image: Callable[..., Path], tmp_path: Path) -> None:
    files = {"kernel8.img": b"K", "bcm2710-rpi-3-b.dtb": b"D"}
    with pytest.raises(UserError) as raised:
        board_boot(card(make_image, "arm_64bit=1\nos_prefix=test/\n", files), tmp_path, "raspi3b")
    assert "sets os_prefix=test/" in str(raised.value) and "\n" not in str(raised.value)


def test_no_initramfs_without_the_file(make_image: Callable[..., Path], tmp_path: Path) -> None:
    files = {"kernel8.img": b"K", "bcm2710-rpi-3-b.dtb": b"D"}
    picked = board_boot(
        card(make_image, "arm_64bit=1\nauto_initramfs=1\n", files), tmp_path, "raspi3b"
    )
    assert picked.initrd is None


@pytest.mark.parametrize(
    ("config", "files", "message"),
    [
        (
            "arm_64bit=1\n",
            {"bcm2710-rpi-3-b.dtb": b"D"},
            "no kernel8.img (kernel that config.txt picks",
        ),
        (
            "arm_64bit=1\ndevice_tree=my.dtb\n",
            {"kernel8.img": b"K"},
            "no my.dtb (device tree that device_tree= picks",
        ),
        ("", {"kernel7.img": b"K"}, "boots the 32-bit kernel7.img (no arm_64bit=1)"),
    ],
)
def test_a_card_the_board_cannot_boot_is_one_line(
    make_image: Callable[..., Path],
    tmp_path: Path,
    config: str,
    files: dict[str, bytes],
    message: str,
) -> None:
    with pytest.raises(UserError) as raised:
        board_boot(card(make_image, config, files), tmp_path, "raspi3b")
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_the_boards_command_line() -> None:
    words = kernel_command_line(
        "console=serial0,115200 root=PARTUUID=x-02", BOARD_MACHINES["raspi3b"]
    ).split()
    assert words[0] == "console=ttyS1,115200" and "root=PARTUUID=x-02" in words
    assert "modprobe.blacklist=" + ",".join(BLACKLIST) in words
    assert "systemd.default_device_timeout_sec=300" in words
    # the watchdog stays unarmed: QEMU's BCM2835 resets the board the moment it is armed
    assert "watchdog_disarm=0" in words and "systemd.watchdog_sec=off" in words
    assert "systemd.watchdog_device=/dev/pifleet-no-watchdog" in words


@pytest.mark.parametrize(
    "machine", [MACHINES["arm64"], MACHINES["armhf"], *BOARD_MACHINES.values()]
)
def test_kernel_hardening_that_only_slows_emulation_is_off_on_every_machine(
    machine: Machine,
) -> None:
    """On arm64, KASLR (which forces KPTI: a TLB flush in QEMU at every entry from user space)
    and the CPU-bug mitigations are off on QEMU's command line only; armhf keeps its kernel's
    defaults. The image's own words stay, in order, and a word the image gives is not doubled."""
    image_words = "root=PARTUUID=x-02 nokaslr rootwait quiet init=/sbin/init"
    words = kernel_command_line(image_words, machine).split()
    kept = image_words.split()
    assert [w for w in words if w in kept] == kept and words.count("nokaslr") == 1, words
    plain = kernel_command_line("root=PARTUUID=x-02", machine).split()
    arm64 = machine.arch == "arm64"
    assert ("nokaslr" in plain) == arm64 and ("mitigations=off" in plain) == arm64, plain
