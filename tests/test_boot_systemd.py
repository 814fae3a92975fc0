"""QEMU proof of Raspberry Pi OS Bookworm's whole first boot, the `systemd` seed format
(issue 12) and a device's static address, in one boot test of three power-ons.

The base is `pifleet base --format systemd` (Debian Bookworm without cloud-init, with
NetworkManager), laid out as Raspberry Pi OS Bookworm ships it: a Raspberry Pi kernel only
(tests/pi_layout.py), so boot-test supplies Debian's generic kernel, and cmdline.txt ending in
`init=/usr/lib/raspberrypi-sys-mods/firstboot`, that file being the stand-in for Pi OS's
first boot (tests/fixtures/rpi-firstboot). pifleet detects the format as `systemd` and writes
firstrun.sh plus its three `systemd.*` words in cmdline.txt.

- Power-on 1: the initramfs honours `init=`; the first boot takes itself out of cmdline.txt,
  regenerates the SSH host keys, gives the disk a new identifier (every PARTUUID in fstab and
  cmdline.txt changes) and reboots.
- Power-on 2: cmdline.txt read again (as a Pi's firmware does) finds the root by its new
  PARTUUID; firstrun.sh runs (kernel-command-line.target, no agent), installs pifleet's host
  key, removes its words, and the guest reboots.
- Power-on 3: pifleet-custody.service zeroes and removes the script (it holds the PSK and host
  key) before the network comes up, and the agent joins.

The host key the device holds at the end is the one pifleet put in known_hosts. The device has
a static address (`devices[].address`) in QEMU user networking's 10.0.2.0/24 (gateway .2,
DNS .3), written as a NetworkManager keyfile; a unit added to this test's image only prints
eth0's addresses on the console, the guest's own report (tests/static_address.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from builder.bases import debian as base
from builder.testserver.server import K3sTestServer
from firstboot.state import ORDER
from tests.boot_helpers import BOOT_TIMEOUT, DEVICE, device_image, guest_disk, image_sha256
from tests.conftest import BOOT_AGENT, pifleet
from tests.image_read import ext4_read, fat_names, fat_read
from tests.pi_layout import FIRSTBOOT, pi_kernel_only, with_bookworm_first_boot
from tests.static_address import ADDRESS, DEVICE_KEYS, GATEWAY, add_show_unit, assert_static_on_eth0

pytestmark = pytest.mark.slow

SYSTEMD_SUITE = "bookworm"  # as Raspberry Pi OS Bookworm (`make test` reads this line)
WORDS = (
    "systemd.run=/boot/firmware/firstrun.sh",
    "systemd.run_success_action=reboot",
    "systemd.unit=kernel-command-line.target",
)
KERNEL_CMDLINE = re.compile(r"Kernel command line: (.*)")


@pytest.fixture(scope="session")
def systemd_base() -> Path:
    """The arm64 `pifleet base --format systemd` (cached by its inputs; ~5 min when absent)."""
    return base.ensure_base("arm64", SYSTEMD_SUITE, fmt="systemd")


@pytest.fixture(scope="session")
def systemd_device(
    systemd_base: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    workdir = tmp_path_factory.mktemp("systemd")
    pi_os = with_bookworm_first_boot(pi_kernel_only(systemd_base, workdir / "raspios-bookworm.img"))
    image, state = device_image(workdir, "arm64", BOOT_AGENT, pi_os, DEVICE_KEYS)
    add_show_unit(image, workdir)
    return image, state


def test_systemd_base_is_detected_as_the_systemd_format(systemd_base: Path) -> None:
    facts = json.loads(
        pifleet("inspect", "--json", str(systemd_base), cwd=systemd_base.parent).stdout
    )
    assert (
        facts["os"]["codename"] == SYSTEMD_SUITE and facts["os"]["boot_mount"] == "/boot/firmware"
    )
    assert not facts["os"]["cloud_init"]
    assert facts["os"]["init_format"] == "systemd", facts["os"]
    assert facts["image"]["boot_label"] == "bootfs" and facts["seed"]["files"] == []


def test_bookworm_first_boot_then_firstrun_then_the_join_with_its_static_address(
    systemd_device: tuple[Path, Path], tmp_path: Path
) -> None:
    image, state = systemd_device
    vm = state.parent  # the test server runs on the state the image's token was minted for
    before = image_sha256(image)
    proc = pifleet(
        "boot-test", str(image), "--keep", str(vm), "--timeout", BOOT_TIMEOUT,
        cwd=tmp_path, timeout=1200,
    )  # fmt: skip
    console = (vm / "console.log").read_text()
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert f"joined: node {DEVICE} in " in proc.stdout and "after 2 reboots;" in proc.stdout
    lines = console.splitlines()
    # Two reboots: the first boot's own `reboot -f`, then systemd.run_success_action's.
    reboots = [i for i, ln in enumerate(lines) if "reboot: Restarting system" in ln]
    assert len(reboots) == 2, reboots
    firstboot = [
        ln.split("rpi-firstboot: ", 1)[1] for ln in lines[: reboots[0]] if "rpi-firstboot: " in ln
    ]
    assert firstboot[:2] == [
        "cmdline.txt no longer starts the first boot",
        "regenerated the SSH host keys",
    ]
    assert firstboot[-1] == "rebooting" and firstboot[-2].startswith("disk identifier "), firstboot
    old_id, new_id = firstboot[-2].split()[2], firstboot[-2].split()[-1]
    assert old_id != new_id, firstboot
    # Three power-ons, each with the cmdline.txt the one before left. The first is `quiet` (as
    # Pi OS ships it: the kernel does not print its command line), so the initramfs says it.
    first = lines[: reboots[0]]
    assert any(f"starting init={FIRSTBOOT}" in ln for ln in first), first[:20]
    assert any(f"(cmdline.txt: root=PARTUUID={old_id}-02)" in ln for ln in first), first[:20]
    cmdlines = [
        m.group(1).split() for ln in lines[reboots[0] :] if (m := KERNEL_CMDLINE.search(ln))
    ]
    assert len(cmdlines) == 2, cmdlines
    assert not any(w.startswith("init=") or w == "quiet" for w in cmdlines[0]), cmdlines[0]
    assert f"root=PARTUUID={new_id}-02" in cmdlines[0], cmdlines[0]
    assert all(word in cmdlines[0] for word in WORDS), cmdlines[0]
    assert not any(w.startswith(("systemd.", "init=")) for w in cmdlines[1]), cmdlines[1]
    assert f"root=PARTUUID={new_id}-02" in cmdlines[1], cmdlines[1]
    # The agent ran only after the second reboot (kernel-command-line.target has no multi-user).
    states = [ln.split("state=")[1].split()[0] for ln in lines if "firstboot: state=" in ln]
    assert states == list(ORDER)
    first_state = next(i for i, ln in enumerate(lines) if "firstboot: state=" in ln)
    assert first_state > reboots[1]
    assert f"pifleet-firstboot: joined node={DEVICE}" in console and "Traceback" not in console
    assert "Cloud-init" not in console
    assert_static_on_eth0("\n".join(lines[reboots[1] :]))
    assert K3sTestServer(state_dir=state).registered_nodes() == [DEVICE]
    root = assert_firstrun_done_on_disk(vm / "disk.qcow2", tmp_path)
    fstab = ext4_read(root, "/etc/fstab").decode()
    assert f"PARTUUID={new_id}-01" in fstab and old_id not in fstab, fstab
    # The host key the device holds after every first-boot step is the one in known_hosts.
    held = ext4_read(root, "/etc/ssh/ssh_host_ed25519_key.pub").decode().split()[:2]
    known = (image.parent / "out/known_hosts").read_text().split("\n")
    entry = next(ln.split()[1:3] for ln in known if ln and ln.split()[0].split(",")[0] == DEVICE)
    assert held == entry, f"the device holds {held}, known_hosts says {entry}"
    assert image_sha256(image) == before, "three power-ons wrote the image itself"


def assert_firstrun_done_on_disk(overlay: Path, tmp: Path) -> Path:
    """What the guest left: no firstrun.sh, cmdline.txt without its words, the hostname,
    the NetworkManager keyfile, the agent done."""
    disk, root = guest_disk(overlay, tmp)
    assert "firstrun.sh" not in fat_names(disk, "/"), "firstrun.sh is still on the boot partition"
    cmdline = fat_read(disk, "/cmdline.txt").decode()
    assert "systemd." not in cmdline, f"cmdline.txt keeps firstrun's systemd words: {cmdline}"
    assert "root=PARTUUID=" in cmdline, f"cmdline.txt lost its root: {cmdline}"
    hostname = ext4_read(root, "/etc/hostname").decode().strip()
    assert hostname == DEVICE, f"the guest's hostname is {hostname}, not {DEVICE}"
    keyfile = ext4_read(root, "/etc/NetworkManager/system-connections/pifleet-eth0.nmconnection")
    assert f"address1={ADDRESS},{GATEWAY}".encode() in keyfile, (
        "the NetworkManager keyfile has not the device's static address"
    )
    state = json.loads(ext4_read(root, "/var/lib/pifleet/state.json"))
    assert state["state"] == "done", f"the agent's state is {state['state']}, not done"
    assert state["node_name"] == DEVICE, f"the agent's node is {state['node_name']}"
    return root
