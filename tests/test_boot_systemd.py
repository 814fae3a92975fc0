"""QEMU proof of the `systemd` seed format (issue 12) and of a device's static address.

The base is `pifleet base --format systemd`: Debian Bookworm without cloud-init, with
NetworkManager, laid out like Raspberry Pi OS Bookworm. pifleet detects its format as
`systemd` and writes firstrun.sh plus its three `systemd.*` words in cmdline.txt. One boot
proves it all: the first power-on runs firstrun.sh (kernel-command-line.target, no agent)
which removes its words, and the guest reboots once; the second power-on reads the edited
cmdline.txt (as a Pi's firmware does), pifleet-custody.service zeroes and removes the
script (it holds the PSK and host key) before the network comes up, and the agent joins.
The device has a static address (`devices[].address`) in QEMU user networking's
10.0.2.0/24 (gateway .2, DNS .3),
written as a NetworkManager keyfile; a unit added to this test's image only prints eth0's
addresses on the console, the guest's own report (tests/static_address.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from builder.bases import debian as base
from builder.testserver.server import K3sTestServer
from firstboot.state import ORDER
from tests.boot_helpers import BOOT_TIMEOUT, DEVICE, device_image, guest_disk
from tests.conftest import BOOT_AGENT, pifleet
from tests.image_read import ext4_read, fat_names, fat_read
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
    image, state = device_image(workdir, "arm64", BOOT_AGENT, systemd_base, DEVICE_KEYS)
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


def test_systemd_image_runs_firstrun_reboots_once_joins_with_its_static_address(
    systemd_device: tuple[Path, Path], tmp_path: Path
) -> None:
    image, state = systemd_device
    vm = state.parent  # the test server runs on the state the image's token was minted for
    proc = pifleet(
        "boot-test", str(image), "--keep", str(vm), "--timeout", BOOT_TIMEOUT,
        cwd=tmp_path, timeout=1200,
    )  # fmt: skip
    console = (vm / "console.log").read_text()
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert f"joined: node {DEVICE} in " in proc.stdout and "after 1 reboot;" in proc.stdout
    lines = console.splitlines()
    # Exactly one reboot, asked for by systemd.run_success_action once firstrun.sh succeeded.
    reboots = [i for i, ln in enumerate(lines) if "reboot: Restarting system" in ln]
    assert len(reboots) == 1, reboots
    # Two power-ons: the first with firstrun.sh's words, the second with them removed.
    cmdlines = [m.group(1) for ln in lines if (m := KERNEL_CMDLINE.search(ln))]
    assert len(cmdlines) == 2, cmdlines
    assert all(word in cmdlines[0].split() for word in WORDS), cmdlines[0]
    assert not any(w.startswith("systemd.") for w in cmdlines[1].split()), cmdlines[1]
    assert "root=PARTUUID=" in cmdlines[1]
    # The agent ran only after the reboot (kernel-command-line.target has no multi-user).
    states = [ln.split("state=")[1].split()[0] for ln in lines if "firstboot: state=" in ln]
    assert states == list(ORDER)
    first_state = next(i for i, ln in enumerate(lines) if "firstboot: state=" in ln)
    assert first_state > reboots[0]
    assert f"pifleet-firstboot: joined node={DEVICE}" in console and "Traceback" not in console
    assert "Cloud-init" not in console
    assert_static_on_eth0(console[console.index("reboot: Restarting system") :])
    assert K3sTestServer(state_dir=state).registered_nodes() == [DEVICE]
    assert_firstrun_done_on_disk(vm / "disk.qcow2", tmp_path)


def assert_firstrun_done_on_disk(overlay: Path, tmp: Path) -> None:
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
