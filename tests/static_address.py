"""A device's static address in QEMU user networking, and the guest's own report of eth0.

slirp's network is 10.0.2.0/24 with the host (and the test server) at .2 and DNS at .3; its
DHCP server would give the guest .15. The test server sees every guest as 127.0.0.1, so the
proof is the guest's: a unit added to a test's image only prints eth0's IPv4 addresses and
the default route on the console before the agent starts.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.image_read import partitions

ADDRESS, GATEWAY, DNS = "10.0.2.50/24", "10.0.2.2", "10.0.2.3"
DHCP_ADDRESS = "10.0.2.15"  # what slirp's DHCP server would have given eth0
DEVICE_KEYS = f"address: {ADDRESS}\ngateway: {GATEWAY}\ndns: [{DNS}]"  # for devices[]
SHOW_UNIT = "pifleet-test-address.service"
SHOW_ADDRESS = """\
[Unit]
Description=pifleet test: eth0's IPv4 addresses and default route on the console
Wants=network-online.target
After=network-online.target
Before=pifleet-firstboot.service

[Service]
Type=oneshot
ExecStart=ip -4 -o addr show dev eth0
ExecStart=ip -4 route show default
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""
SHOWN = re.compile(r" ip\[\d+\]: \d+: eth0\s+inet (\S+) ")


def add_show_unit(image: Path, tmp: Path) -> None:
    """SHOW_UNIT, enabled, in this image's root filesystem (debugfs on the root partition)."""
    spec = f"{image}?offset={partitions(image)[1]['start'] * 512}"
    source = tmp / SHOW_UNIT
    source.write_text(SHOW_ADDRESS)
    unit = f"/etc/systemd/system/{SHOW_UNIT}"
    for cmd in (
        f"write {source} {unit}",
        f"symlink /etc/systemd/system/multi-user.target.wants/{SHOW_UNIT} {unit}",
    ):
        subprocess.run(["debugfs", "-w", "-R", cmd, spec], check=True, capture_output=True)


def assert_static_on_eth0(console: str) -> None:
    """eth0 has ADDRESS only (no DHCP lease) and the default route via GATEWAY, as the guest
    printed them (once: the unit runs in the boot that joins)."""
    shown = [m.group(1) for m in map(SHOWN.search, console.splitlines()) if m]
    assert shown == [ADDRESS], shown
    assert DHCP_ADDRESS not in console
    assert re.search(rf"\]: default via {re.escape(GATEWAY)} dev eth0 proto static", console)
