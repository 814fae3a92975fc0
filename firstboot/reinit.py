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
| so the CA proves nothing alone (anyone who once asked can replay it): a server counts only when its TLS certificate verifies against this cluster's CA (the one the image carries), which only the cluster's servers hold a key for | pkg/server/handlers/handlers.go:CACerts; K3s's serving certificate (dynamiclistener, signed by server-ca) |
| the other servers are named in the device file's tls_san (cluster.server's host and every server's name, builder/fleet/servers.py), on cluster.server's port | pifleet |

A server that does not answer, or answers without a certificate the CA signed, proves nothing
and is skipped: on the cluster's real first boot none of the others runs yet, and a host on the
LAN that replays the public CA at a server's name must not keep the cluster from starting.
"""

from __future__ import annotations

import hmac
import ssl
from typing import List, Optional
from urllib.parse import urlsplit

from firstboot import joinconfig
from firstboot.paths import Root
from firstboot.retry import Terminal
from firstboot.roles import DB_DIR, SERVER_CA
from firstboot.server import Pin, ServerError, get
from firstboot.x509 import CertError

PROBE_TIMEOUT = 3.0


def peers(join: joinconfig.JoinConfig, device: joinconfig.DeviceConfig, node: str) -> List[str]:
    """The URLs of the other servers, each once."""
    parts = urlsplit(join.server)
    port = parts.port or 6443
    hosts = [parts.hostname or "", *device.tls_san]
    names = [h for h in dict.fromkeys(hosts) if h and h.lower() != node.lower()]
    return ["https://" + ("[" + h + "]" if ":" in h else h) + ":" + str(port) for h in names]


def answers_with(url: str, ca_hash: str, context: ssl.SSLContext) -> bool:
    """Whether `url` serves the CA of `ca_hash` over TLS that `context` (the CA) verifies."""
    try:
        status, body, _headers = get(url, "/cacerts", context, PROBE_TIMEOUT)
        found = Pin(body).ca_hash if status == 200 else ""
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
    try:  # the CA the image carries (roles.local_pin read and checked it just before)
        context = Pin(root(SERVER_CA).read_bytes()).context(check_time=False)
    except (OSError, CertError, ValueError) as exc:
        why = "cannot read " + SERVER_CA + " (the cluster CA): " + str(exc)
        raise ServerError("not_k3s", why) from None
    for url in peers(join, device, node):
        if answers_with(url, ca_hash, context):
            raise Terminal(
                "refusing cluster-init: " + url + " already serves this cluster's CA (sha256 "
                + ca_hash[:16] + "...), so this is a re-flashed first server and would start a "
                "second, empty cluster; set cluster.initialized: true and rebuild its card, so "
                "it joins as a server"
            )  # fmt: skip
