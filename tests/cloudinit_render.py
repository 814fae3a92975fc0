"""A network-config file through the host's real cloud-init: its netplan-v2 parser and its
networkd renderer (what a guest's cloud-init does with the file at boot)."""

from __future__ import annotations

import subprocess
from pathlib import Path

_RENDER = (
    "import sys, yaml\n"
    "from cloudinit.net import network_state, networkd\n"
    "cfg = yaml.safe_load(open(sys.argv[1]))['network']\n"
    "ns = network_state.parse_net_config_data(cfg)\n"
    "print(networkd.Renderer()._render_content(ns))\n"
)


def networkd_render(network_config: Path) -> subprocess.CompletedProcess[str]:
    """cloud-init's rendering of `network_config` for systemd-networkd (stdout), or its error."""
    return subprocess.run(
        ["/usr/bin/python3", "-c", _RENDER, str(network_config)], capture_output=True, text=True
    )
