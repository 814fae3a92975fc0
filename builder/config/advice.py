"""Build-time warnings about a fleet that builds but would run badly: one line each, on the
build's warning channel (`log.warning("warning: ...")`), never a refusal.

| warning | source |
|---|---|
| cluster.server's host ends in `.local`: K3s is a static musl binary that resolves names from /etc/hosts and DNS only, never mDNS | k3s-io/k3s#9748 |
| a server device without a static address: etcd's peer URL is the address of the default-route interface, and a new DHCP lease makes the member fail ("this server is a not a member of the etcd cluster") | k3s-io/k3s#11778 |
| a server on a board with under 2 GB of RAM (`board`) | k3s-io/docs docs/installation/requirements.md (server: 2 GB minimum); docs/reference/resource-profiling.md (a Pi 4B server with embedded etcd: about 1.6 GB) |
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from builder.config.model import FleetConfig

log = logging.getLogger("pifleet.config")

# Raspberry Pi boards by RAM in MB (the products' own specifications); `board` names one.
BOARD_RAM: dict[str, int] = {
    "pi3a+": 512,
    "pi3b": 1024,
    "pi3b+": 1024,
    "zero2w": 512,
    "cm3": 1024,
    "pi4-1gb": 1024,
    "pi4-2gb": 2048,
    "pi4-4gb": 4096,
    "pi4-8gb": 8192,
    "pi400": 4096,
    "cm4-1gb": 1024,
    "cm4-2gb": 2048,
    "cm4-4gb": 4096,
    "cm4-8gb": 8192,
    "pi5-1gb": 1024,
    "pi5-2gb": 2048,
    "pi5-4gb": 4096,
    "pi5-8gb": 8192,
    "pi5-16gb": 16384,
    "pi500": 8192,
    "cm5-2gb": 2048,
    "cm5-4gb": 4096,
    "cm5-8gb": 8192,
    "cm5-16gb": 16384,
}
SERVER_RAM_MB = 2048  # K3s's minimum for a server


def warnings(config: FleetConfig) -> list[str]:
    """Every warning for `config`, one line each."""
    lines = []
    host = (urlsplit(config.cluster.server).hostname or "").rstrip(".")
    if host.lower().endswith(".local"):
        lines.append(
            f"warning: {config.where('cluster.server')}: {host} is an mDNS (.local) name; K3s is"
            " a static musl binary that resolves names from /etc/hosts and DNS only, never mDNS"
            " (k3s-io/k3s#9748), so devices would loop on 'failed to get CA certs': use a DNS"
            " name or an address"
        )
    for where, board, name in _servers(config):
        static = next((d.static for d in config.devices if d.hostname == name), None)
        if static is None and config.network.static is None:
            lines.append(
                f"warning: {config.where(where)}: server {name} has no static address; etcd's"
                " peer URL is its default-route address, so a new DHCP lease breaks its member"
                " ('this server is a not a member of the etcd cluster', k3s-io/k3s#11778): give"
                " it address: (and node_ip), or a DHCP reservation"
            )
        if board and BOARD_RAM[board] < SERVER_RAM_MB:
            lines.append(
                f"warning: {config.where(where)}: server {name} is a {board} with"
                f" {BOARD_RAM[board]} MB of RAM; K3s asks 2 GB for a server"
                " (docs.k3s.io installation/requirements): run it as an agent"
            )
    return lines


def _servers(config: FleetConfig) -> list[tuple[str, str | None, str]]:
    """(config key, board, host name) of every device that runs `k3s server`."""
    found = []
    for i, device in enumerate(config.devices):
        if config.cluster.role_of(device.hostname) == "server":
            found.append((f"devices[{i}]", device.board or config.hardware.board, device.hostname))
    if not found and config.cluster.role == "server" and not config.cluster.create:
        found.append(("cluster.role", config.hardware.board, "(every device of the image)"))
    return found


def warn(config: FleetConfig) -> None:
    for line in warnings(config):
        log.warning("%s", line)
