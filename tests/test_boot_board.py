"""`pifleet boot-test --machine raspi3b`: QEMU's Raspberry Pi 3 board boots the image's own
kernel, initramfs and device tree, picked from its boot partition as the firmware picks them
(builder/qemu/board.py), and the device joins.

Two card families (tests/pi_layout.py): a Raspberry Pi OS Trixie card (`pi_board_image`:
kernel8.img, initramfs8 by `auto_initramfs=1`, the device tree by `device_tree=`), and Debian's
image for the Raspberry Pi (`debian_raspi`: `kernel=vmlinuz-<version>`, `initramfs ...
followkernel`, the device tree by its upstream name under `upstream_kernel=1`, the root by
LABEL=RASPIROOT), as arm64 on raspi3b and as armhf on raspi2b. The card is
the board's SD card (an overlay of a power-of-two size), Ethernet is usb-net (cdc_ether, eth0).

A board has no real-time clock (nor has a Pi 3) and QEMU's user network no NTP, so the fleet
gives `agent.clock_sync_timeout: 10`: the agent takes the time from the pinned server after
10 s rather than 120 s, the path a Pi without RTC or NTP takes. The Debian raspi card on
raspi3b is in the default run (about 2.5 min); the Pi OS card on raspi3b and raspi2b run with
`pytest -m boards` and bench/boot.py --mode pi-os-board.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.testserver.server import K3sTestServer
from tests.boot_helpers import BOOT_TIMEOUT, DEVICE, base_image, device_image, image_sha256
from tests.conftest import pifleet
from tests.pi_distros import debian_raspi
from tests.pi_layout import pi_board_image

pytestmark = pytest.mark.slow
BOARD_AGENT = "agent: {recheck_interval: 15, backoff_cap: 5, clock_sync_timeout: 10}\n"


@pytest.mark.boards
def test_raspi3b_boots_the_images_own_kernel_and_joins(tmp_path: Path) -> None:
    card = pi_board_image(base_image("arm64"), tmp_path / "raspios-card.img", tmp_path)
    image, state = device_image(tmp_path / "device", "arm64", BOARD_AGENT, base_path=card)
    before = image_sha256(image)
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
    # Pi OS arms the hardware watchdog (40-rpi-enable-watchdog.conf): it must stay unarmed
    assert "raspi3b: on the QEMU command line only: the watchdog is not armed" in proc.stderr
    assert "root is /dev/mmcblk0p2" in console, "the root is not on the board's SD card"
    assert "virtio" not in console.lower(), "a virt machine's device on the board"
    assert "cdc_ether" in console and "eth0" in console, "no Ethernet over USB"
    assert f"pifleet-firstboot: joined node={DEVICE}" in console and "Traceback" not in console
    assert K3sTestServer(state_dir=state).registered_nodes() == [DEVICE]
    assert image_sha256(image) == before, "the image was written"


def board_boot_test(image: Path, state: Path, board: str) -> tuple[str, str]:
    """`pifleet boot-test --machine BOARD` through the real CLI: (stdout+stderr, console)."""
    before = image_sha256(image)
    vm = state.parent
    proc = pifleet(
        "boot-test", str(image), "--machine", board, "--keep", str(vm),
        "--timeout", BOOT_TIMEOUT, cwd=image.parent, timeout=1500,
    )  # fmt: skip
    console = (vm / "console.log").read_text()
    assert proc.returncode == 0, proc.stdout[-4000:] + console[-4000:]
    assert image_sha256(image) == before, "the image was written"
    assert f"pifleet-firstboot: joined node={DEVICE}" in console and "Traceback" not in console
    assert "clock: no time sync; taking the time from the pinned server" in console
    assert K3sTestServer(state_dir=state).registered_nodes() == [DEVICE]
    return proc.stdout + proc.stderr, console


@pytest.mark.parametrize(
    ("board", "arch", "model", "dtb"),
    [
        ("raspi3b", "arm64", "Raspberry Pi 3 Model B", "bcm2837-rpi-3-b.dtb"),
        pytest.param(
            "raspi2b",
            "armhf",
            "Raspberry Pi 2 Model B",
            "bcm2836-rpi-2-b.dtb",
            marks=pytest.mark.boards,
        ),
    ],
)
def test_a_debian_raspi_card_boots_its_own_kernel_on_the_board(
    tmp_path: Path, board: str, arch: str, model: str, dtb: str
) -> None:
    card = debian_raspi(base_image(arch), tmp_path / "debian-raspi.img", tmp_path, arch)
    image, state = device_image(tmp_path / "device", arch, BOARD_AGENT, base_path=card)
    out, console = board_boot_test(image, state, board)
    version = next(
        n.removeprefix("vmlinuz-") for n in out.split() if n.startswith("vmlinuz-")
    ).rstrip(",")
    assert f"{board}: booting the image's vmlinuz-{version}, initrd.img-{version}, {dtb}" in out
    assert f"Machine model: {model}" in console, f"not the {board} board"
    assert "(cmdline.txt: root=LABEL=RASPIROOT)" in console and "root is /dev/mmcblk0p2" in console
    assert "virtio" not in console.lower(), "a virt machine's device on the board"
    assert "cdc_ether" in console and "eth0" in console, "no Ethernet over USB"
    assert f"{board}: on the QEMU command line only: the watchdog is not armed" in out
