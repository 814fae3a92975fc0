"""`pifleet boot-test --machine raspi3b`: QEMU's Raspberry Pi 3 board boots the image's own
kernel, initramfs and device tree, picked from its boot partition as the firmware picks them
(builder/qemu/board.py), and the device joins.

The image is laid out as a Raspberry Pi OS Trixie card (tests/pi_layout.py `pi_board_image`):
kernel8.img, initramfs8 by `auto_initramfs=1`, the device tree by `device_tree=`. The card is
the board's SD card (an overlay of a power-of-two size), Ethernet is usb-net (cdc_ether, eth0).
Under -M raspi3b a boot takes about twice as long as under -M virt, so this runs with
`pytest -m boards` and bench/boot.py --mode raspi3b, not in the default run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.testserver.server import K3sTestServer
from tests.boot_helpers import BOOT_TIMEOUT, DEVICE, base_image, device_image
from tests.conftest import BOOT_AGENT, pifleet
from tests.pi_layout import pi_board_image

pytestmark = [pytest.mark.slow, pytest.mark.boards]


def test_raspi3b_boots_the_images_own_kernel_and_joins(tmp_path: Path) -> None:
    card = pi_board_image(base_image("arm64"), tmp_path / "raspios-card.img", tmp_path)
    image, state = device_image(tmp_path / "device", "arm64", BOOT_AGENT, base_path=card)
    before = image.stat().st_mtime_ns, os.path.getsize(image)
    vm = state.parent
    proc = pifleet(
        "boot-test", str(image), "--machine", "raspi3b", "--keep", str(vm),
        "--timeout", BOOT_TIMEOUT, cwd=tmp_path, timeout=1500,
    )  # fmt: skip
    console = (vm / "console.log").read_text()
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert f"joined: node {DEVICE} in " in proc.stdout
    assert (
        "raspi3b: booting the image's kernel8.img, initramfs8, bcm2837-rpi-3-b.dtb" in proc.stderr
    )
    assert "Machine model: Raspberry Pi 3 Model B" in console, "not the raspi3b board"
    assert "root is /dev/mmcblk0p2" in console, "the root is not on the board's SD card"
    assert "virtio" not in console.lower(), "a virt machine's device on the board"
    assert "cdc_ether" in console and "eth0" in console, "no Ethernet over USB"
    assert f"pifleet-firstboot: joined node={DEVICE}" in console and "Traceback" not in console
    assert K3sTestServer(state_dir=state).registered_nodes() == [DEVICE]
    assert (image.stat().st_mtime_ns, os.path.getsize(image)) == before, "the image was written"
