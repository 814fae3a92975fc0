"""A device's K3s role and the files that make K3s run it, including the servers of a
cluster pifleet created (`pifleet cluster init`).

The device file may override the fleet's role. A server then either initialises the
cluster (`cluster_init: true`, the first server) or joins `server` like an agent would,
as user `server`. The seed decides, never the agent: the agent does not fall back to
`cluster-init` when no server answers.

The server that initialises has no server to ask for `/cacerts`: the CA is the one the
image carries under /var/lib/rancher/k3s/server/tls/ (K3s's custom CA layout), and the
token's hash must match it, computed as K3s computes it (firstboot/x509.py).

config.yaml of a server is written once per seed (the bytes of join.json and
device.json): a resumed agent after a power cut leaves it as it is. When an etcd member
already exists (/var/lib/rancher/k3s/server/db), K3s restarts that member whatever the
flags say, and the agent never rewrites the config of such a server.
"""

from __future__ import annotations

import hashlib
from typing import List, Optional

from firstboot import joinconfig, k3sfiles
from firstboot.paths import Root
from firstboot.server import Pin, ServerError, check_pin
from firstboot.token import Token

TLS_DIR = "/var/lib/rancher/k3s/server/tls"
SERVER_CA = TLS_DIR + "/server-ca.crt"
DB_DIR = "/var/lib/rancher/k3s/server/db"


def role_of(join: joinconfig.JoinConfig, device: Optional[joinconfig.DeviceConfig]) -> str:
    return device.role if device and device.role else join.role


def initialises(device: Optional[joinconfig.DeviceConfig]) -> bool:
    return bool(device and device.role == "server" and device.cluster_init)


def local_pin(root: Root, token: Token) -> Pin:
    """The CA the image carries, checked against the token's hash (the first server)."""
    try:
        body = root(SERVER_CA).read_bytes()
    except OSError as exc:
        raise ServerError(
            "not_k3s", "cannot read " + SERVER_CA + " (the cluster CA): " + str(exc.strerror)
        ) from None
    if token.ca_hash is None:
        raise ServerError("ca_mismatch", "the server token carries no CA hash to check the CA by")
    return check_pin(body, token)


def seed_id(root: Root, paths: List[str]) -> str:
    """What identifies the seed: the bytes of the join config and the device file."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            digest.update(root(path).read_bytes())
        except OSError:
            digest.update(b"-")
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def config_kept(root: Root, role: str, written_for: Optional[str], seed: str) -> Optional[str]:
    """Why a server's existing config.yaml stays as it is, or None to write it."""
    if role != "server" or not root(k3sfiles.CONFIG_PATH).exists():
        return None
    if root(DB_DIR).exists():
        return "an etcd member exists (" + DB_DIR + "): K3s restarts it; config.yaml kept"
    if written_for == seed:
        return "config.yaml was written for this seed already; kept"
    return None


def k3s_config(
    root: Root,
    join: joinconfig.JoinConfig,
    device: Optional[joinconfig.DeviceConfig],
    server: str,
    node: str,
) -> bytes:
    """config.yaml for this device's role."""
    labels = k3sfiles.merge_labels(join.node_labels, device.node_labels if device else [])
    taints = list(join.node_taints) + list(device.node_taints if device else [])
    extra = dict(join.k3s_config.get(role_of(join, device), {}))
    extra.update(device.k3s_config if device else {})
    if role_of(join, device) != "server" or device is None or device.role != "server":
        return k3sfiles.config_yaml(
            server, node, labels, taints, list(join.kubelet_args), extra=extra
        )
    agent_token = k3sfiles.AGENT_TOKEN_PATH
    return k3sfiles.config_yaml(
        None if initialises(device) else server,
        node,
        labels,
        taints,
        list(join.kubelet_args),
        tls_san=list(device.tls_san),
        agent_token_file=agent_token if root(agent_token).exists() else None,
        extra=extra,
    )
