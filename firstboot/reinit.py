"""Before `cluster-init`: is the cluster already running on the other servers?

A re-flashed first server whose seed still says `cluster_init` (cluster.initialized not set)
would start a second, empty cluster with the same CA and token, and agents would trust it.
So the first server asks every other server first, without credentials, for `/cacerts`,
and refuses to initialise when one answers with this cluster's CA hash.

| rule | source |
|---|---|
| an etcd member that exists is restarted whatever cluster-init says (nothing to guard then) | k3s pkg/etcd/etcd.go:IsInitialized |
| cluster-init with no member starts a new etcd cluster, whatever runs elsewhere | etcd.go:Start, newCluster |
| `/cacerts` answers anyone, without credentials, with the cluster's server CA | pkg/server/handlers/handlers.go:CACerts; router.go |
| the other servers are named in the device file's tls_san (cluster.server's host and every server's name, builder/fleet/servers.py), on cluster.server's port | pifleet |

A server that does not answer proves nothing and is skipped: on the cluster's real first
boot none of the others runs yet.
"""

from __future__ import annotations

import hmac
from typing import List, Optional
from urllib.parse import urlsplit

from firstboot import joinconfig
from firstboot.paths import Root
from firstboot.retry import Terminal
from firstboot.roles import DB_DIR
from firstboot.server import Pin, ServerError, fetch_cacerts
from firstboot.x509 import CertError

PROBE_TIMEOUT = 3.0


def peers(join: joinconfig.JoinConfig, device: joinconfig.DeviceConfig, node: str) -> List[str]:
    """The URLs of the other servers, each once."""
    parts = urlsplit(join.server)
    port = parts.port or 6443
    hosts = [parts.hostname or "", *device.tls_san]
    names = [h for h in dict.fromkeys(hosts) if h and h.lower() != node.lower()]
    return ["https://" + ("[" + h + "]" if ":" in h else h) + ":" + str(port) for h in names]


def answers_with(url: str, ca_hash: str) -> bool:
    try:
        found = Pin(fetch_cacerts(url, PROBE_TIMEOUT)).ca_hash
    except (ServerError, CertError, ValueError):
        return False
    return hmac.compare_digest(found, ca_hash)


def refuse_second_cluster(
    root: Root,
    join: joinconfig.JoinConfig,
    device: Optional[joinconfig.DeviceConfig],
    node: str,
    ca_hash: str,
) -> None:
    """Terminal when another server already runs this cluster (same CA hash)."""
    if device is None or root(DB_DIR).exists():
        return
    for url in peers(join, device, node):
        if answers_with(url, ca_hash):
            raise Terminal(
                "refusing cluster-init: " + url + " already serves this cluster's CA (sha256 "
                + ca_hash[:16] + "...), so this is a re-flashed first server and would start a "
                "second, empty cluster; set cluster.initialized: true and rebuild its card, so "
                "it joins as a server"
            )  # fmt: skip
