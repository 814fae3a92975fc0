"""A kubeadm worker's start: `kubeadm join --config`, then its Node Ready as the kubelet's own
credentials read it.

| rule | source |
|---|---|
| `kubeadm join` refuses to run again once it wrote the kubelet's files (preflight `FileAvailable--etc-kubernetes-kubelet.conf`, `...-bootstrap-kubelet.conf`, `...-pki-ca.crt`) | cmd/kubeadm/app/cmd/phases/join/preflight.go; app/preflight/checks.go |
| so a join that a power cut broke off is undone with `kubeadm reset --force` first; a join that wrote kubelet.conf is not run again | cmd/kubeadm/app/cmd/reset.go |
| kubelet.conf: the cluster's `server` and `certificate-authority-data`, the user's `client-certificate`/`client-key` (the rotated `/var/lib/kubelet/pki/kubelet-client-current.pem`) | cmd/kubeadm/app/phases/kubelet/ (TLS bootstrap); client-go clientcmd api/v1 types.go |
| the Node is Ready when its `status.conditions` has `type: Ready` with `status: "True"` | k8s.io/api core/v1 NodeConditionType, ConditionStatus |
| a node may read its own Node with its client certificate | plugin/pkg/auth/authorizer/node/node_authorizer.go |
"""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, List, Optional, Tuple

from firstboot import kubeconfig
from firstboot.paths import Root

KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
PARTIAL = ("/etc/kubernetes/bootstrap-kubelet.conf", "/etc/kubernetes/pki/ca.crt")


class NodeError(Exception):
    """Why the Node cannot be read, or kubeadm failed; never holds the token."""


def joined_before(root: Root) -> bool:
    return root(KUBELET_CONF).is_file()


def broken_off(root: Root) -> bool:
    """A join a power cut stopped after it wrote files: kubeadm would refuse to run again."""
    return not joined_before(root) and any(root(p).exists() for p in PARTIAL)


def run_kubeadm(
    argv: List[str], timeout: float, progress: Callable[[str], None], secret: str
) -> None:
    """Run kubeadm, each output line to `progress` (a line with the secret is masked)."""
    try:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
    except OSError as exc:
        raise NodeError("cannot run " + argv[0] + ": " + str(exc.strerror)) from None
    last = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        text = line.rstrip()
        if text:
            last = text if secret not in text else "(a line naming the token, not shown)"
            progress("kubeadm: " + last)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise NodeError(argv[1] + " took longer than " + str(int(timeout)) + " s") from None
    if code != 0:
        raise NodeError("kubeadm " + argv[1] + " failed (exit " + str(code) + "): " + last)


def _credentials(root: Root) -> Tuple[str, bytes, str, str]:
    """kubelet.conf's (server, CA PEM, client certificate file, client key file)."""
    try:
        config = kubeconfig.load(root(KUBELET_CONF).read_bytes())
        server, ca_pem = kubeconfig.cluster(config)
    except (OSError, ValueError) as exc:
        raise NodeError(KUBELET_CONF + ": " + str(exc)) from None
    users = config.get("users") or []
    if len(users) != 1 or not isinstance(users[0], dict):
        raise NodeError(KUBELET_CONF + ": expected one user")
    user = users[0].get("user") or {}
    cert, key = user.get("client-certificate"), user.get("client-key")
    if not isinstance(cert, str) or not isinstance(key, str):
        raise NodeError(KUBELET_CONF + ": the user has no client-certificate/client-key files")
    return server, ca_pem, str(root(cert)), str(root(key))


def ready(root: Root, node: str, timeout: float = 10.0) -> Tuple[bool, str]:
    """(Ready, what its Ready condition says), read with the kubelet's own credentials."""
    server, ca_pem, cert, key = _credentials(root)
    context = ssl.create_default_context(cadata=ca_pem.decode("ascii", "replace"))
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise NodeError("the kubelet's client certificate: " + str(exc)) from None
    url = server.rstrip("/") + "/api/v1/nodes/" + node
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
            body = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return False, "the API server answered " + str(exc.code) + " for Node " + node
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, "the API server cannot be read: " + str(getattr(exc, "reason", exc))
    conditions = (body.get("status") or {}).get("conditions") or []
    condition: Optional[Dict[str, Any]] = next(
        (c for c in conditions if c.get("type") == "Ready"), None
    )
    if condition is None:
        return False, "Node " + node + " has no Ready condition yet"
    said = str(condition.get("message") or condition.get("reason") or "")
    return condition.get("status") == "True", said
