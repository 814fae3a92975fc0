"""The K3s servers of a cluster pifleet creates (`cluster.create`): what makes one device a
server, beside the boot seed every device gets.

Into the device's root filesystem (never the FAT boot partition, which holds no secret):

| path | content | mode |
|---|---|---|
| /var/lib/rancher/k3s/server, .../server/tls, .../tls/etcd | directories | 0700 |
| /var/lib/rancher/k3s/server/tls/<file> | `cluster/tls/<file>`: K3s's custom CA layout | keys 0600, certificates 0644 |
| /etc/pifleet/token | `cluster/token`, K10<hash>::server:<password> (the golden image has the agents' token) | 0600 |
| /etc/rancher/k3s/agent-token | `cluster/agent-token`, with cluster.agent_token (K3s --agent-token-file) | 0600 |
| /usr/local/bin/k3s-uninstall.sh | install.sh's uninstall script for k3s.service | 0755 |

Into the device file (`pifleet/device.json`, no secret): its role, `cluster_init`
(true on the first server unless `cluster.initialized`: the seed's init/join flag),
`tls_san` (the cluster.server host and every server's name) and, for a server that
joins, the server to join: cluster.server, or the next server when cluster.server names
the device itself (re-flashing the first server joins it back through another one).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from builder import __version__
from builder.cluster.create import cluster_dir, tls_files
from builder.config import k3sconfig
from builder.config.model import Device, FleetConfig
from builder.disk.entries import Directory, Entry, File
from builder.layout import BIN_DIR, K3S_DATA_DIR, K3S_ETC, RANCHER_DIR, RANCHER_ETC, SERVER_DIR
from builder.steps.k3s import uninstall_script
from builder.util.errors import UserError
from builder.util.render import render
from firstboot import joinconfig, k3sfiles

TLS_DIR = f"{SERVER_DIR}/tls"


def seed(
    config: FleetConfig, device: Device, info: joinconfig.DeviceConfig
) -> joinconfig.DeviceConfig:
    """`info` with the device's own K3s flags (k3s_config, node_ip & co.), and its role in a
    cluster pifleet creates."""
    cluster = config.cluster
    info = replace(info, k3s_config=k3sconfig.for_device(device))
    if not cluster.create:
        return info
    if cluster.role_of(device.hostname) == "agent":
        return replace(info, role="agent")
    init = cluster.initialises(device.hostname)
    return replace(
        info,
        role="server",
        cluster_init=init,
        tls_san=tls_san(config),
        server=None if init else join_url(config, device.hostname),
    )


def tls_san(config: FleetConfig) -> list[str]:
    names = [urlsplit(config.cluster.server).hostname or "", *config.cluster.servers]
    return list(dict.fromkeys(n for n in names if n))


def join_url(config: FleetConfig, hostname: str) -> str:
    """The server a joining server asks: cluster.server, unless that is the device itself."""
    url = urlsplit(config.cluster.server)
    if url.hostname != hostname:
        return config.cluster.server
    others = [s for s in config.cluster.servers if s != hostname]  # never empty: see fleet.py
    return f"https://{others[0]}:{url.port or 443}"


def root_entries(config: FleetConfig, device: Device) -> list[Entry]:
    """What the root filesystem of `device` needs to be a server (nothing for an agent)."""
    if not config.cluster.create or config.cluster.role_of(device.hostname) != "server":
        return []
    entries: list[Entry] = [
        Directory(RANCHER_DIR, 0o755),
        Directory(K3S_DATA_DIR, 0o755),
        Directory(SERVER_DIR, 0o700),
        Directory(TLS_DIR, 0o700),
        Directory(f"{TLS_DIR}/etcd", 0o700),
    ]
    for tls in tls_files(config):
        entries.append(File(f"{TLS_DIR}/{tls.path}", 0o600 if tls.secret else 0o644, data=tls.data))
    folder = cluster_dir(config)
    entries.append(File(joinconfig.FLEET_TOKEN_PATH, 0o600, data=_secret(folder / "token")))
    if config.cluster.agent_token:
        agent = _secret(folder / "agent-token")
        entries += [
            Directory(RANCHER_ETC, 0o755),
            Directory(K3S_ETC, 0o755),
            File(k3sfiles.AGENT_TOKEN_PATH, 0o600, data=agent),
        ]
    name, unit = uninstall_script("server")
    script = render("k3s-uninstall.sh", version=__version__, script=name, unit=unit)
    entries.append(File(f"{BIN_DIR}/{name}", 0o755, data=script))
    return entries


def cluster_inputs(config: FleetConfig) -> dict[str, Path]:
    """The cluster's secrets a build reads (what -> path), for the output-vs-input check."""
    if not config.cluster.create:
        return {}
    folder = cluster_dir(config)
    return {
        "the cluster's server token": folder / "token",
        "the cluster's agent token": folder / "agent-token",
    }


def _secret(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(
            f"{path}: missing from the cluster (made by `pifleet cluster init`)"
        ) from None
