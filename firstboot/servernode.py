"""Has this server's own Node registered? Asked through the apiserver with K3s's admin
kubeconfig, because k3s.service's READY does not say so.

| K3s rule | K3s file:function |
|---|---|
| an agent notifies systemd (READY=1) only once its Node exists (configureNode waits for it), so for an agent the unit being active means joined | pkg/agent/run.go:run, configureNode |
| a server notifies when its apiserver and etcd are up; its own kubelet registers the Node later, or never (a kubelet that fails to start) | pkg/server/server.go; pkg/agent/run.go ("the server is responsible for notifying systemd") |
| the admin kubeconfig is /etc/rancher/k3s/k3s.yaml: `server`, `certificate-authority-data`, `client-certificate-data`, `client-key-data` (base64 PEM) | pkg/server/server.go:writeKubeConfig; pkg/util/kubeconfig |
| a Node is Ready when its `Ready` condition has status "True" | k8s.io/api core/v1 NodeCondition |

The client key goes to a 0600 file in a 0700 directory under /run/pifleet for the TLS
handshake only (Python's ssl loads keys from files) and is removed at once.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import ssl
import tempfile
from typing import Dict, Optional

from firstboot.paths import Root
from firstboot.server import ServerError, get, pinned_context

KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"
RUN_DIR = "/run/pifleet"
KEYS = ("server", "certificate-authority-data", "client-certificate-data", "client-key-data")


def read_kubeconfig(text: str) -> Dict[str, str]:
    """The four values of K3s's own kubeconfig (one cluster, one user, as K3s writes it)."""
    found: Dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        if key in KEYS and key not in found and value.strip():
            found[key] = value.strip().strip("\"'")
    return found


def _context(root: Root, config: Dict[str, str]) -> ssl.SSLContext:
    ca, cert, key = (
        base64.b64decode(config[k], validate=True)
        for k in ("certificate-authority-data", "client-certificate-data", "client-key-data")
    )
    context = pinned_context(ca)
    root(RUN_DIR).mkdir(parents=True, exist_ok=True)
    private = tempfile.mkdtemp(prefix="admin-", dir=str(root(RUN_DIR)))  # 0700
    try:
        files = []
        for name, data in (("crt", cert), ("key", key)):
            target = os.path.join(private, name)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            files.append(target)
        context.load_cert_chain(files[0], files[1])
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return context


def not_joined(root: Root, node: str) -> Optional[str]:
    """None when this server's own Node is registered and Ready; else what is awaited."""
    try:
        config = read_kubeconfig(root(KUBECONFIG).read_text(errors="replace"))
    except OSError:
        return "waiting for K3s to write " + KUBECONFIG
    if any(key not in config for key in KEYS):
        return "waiting for K3s to finish " + KUBECONFIG
    try:
        context = _context(root, config)
    except (binascii.Error, ssl.SSLError, ValueError, OSError):
        return KUBECONFIG + " holds no usable admin credentials yet"
    try:
        status, body, _headers = get(config["server"], "/api/v1/nodes/" + node, context)
    except ServerError as exc:
        return "waiting for the apiserver: " + str(exc)
    if status == 404:
        return (
            "waiting for this server's own Node " + node + " to register (the apiserver has none)"
        )
    if status != 200:
        return "the apiserver answered " + str(status) + " for this server's Node " + node
    return None if _ready(body) else "this server's own Node " + node + " is not Ready yet"


def _ready(body: bytes) -> bool:
    try:
        conditions = json.loads(body)["status"]["conditions"]
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
