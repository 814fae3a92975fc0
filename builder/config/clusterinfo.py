"""kubeadm's cluster-info, read from the operator's desk the way `kubeadm join` first reads it:
one anonymous GET, then the CA taken from the kubeconfig inside it.

| rule | source |
|---|---|
| `GET /api/v1/namespaces/kube-public/configmaps/cluster-info` with no credentials and TLS that verifies nothing (the CA is what is being learnt) | kubernetes cmd/kubeadm/app/discovery/token/token.go (an insecure bootstrap kubeconfig without credentials); cluster-bootstrap token/api/types.go: ConfigMapClusterInfo |
| the ConfigMap's `data.kubeconfig` holds a kubeconfig; its cluster is the unnamed one, else the current context's | token/api/types.go: KubeConfigKey; kubeadm util/kubeconfig: GetClusterFromKubeConfig |
| the CA is that cluster's `certificate-authority-data` (base64 of PEM certificates) | client-go tools/clientcmd/api (CertificateAuthorityData) |
| 401: the API server refuses anonymous requests; 403: RBAC does not let anonymous read cluster-info; 404: no cluster-info (not kubeadm, or its bootstrap-token phase never ran) | kube-apiserver status codes; kubeadm init phase bootstrap-token makes cluster-info and its RBAC rule |
| then cluster-info again over TLS that trusts only that CA, and the kubeconfig must be the same bytes | token.go: the second, secure fetch and its byte comparison |

The token is never sent: no request here carries an Authorization header.
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
from typing import Any

import yaml

from builder.util.errors import BuildError
from firstboot.server import ServerError, bootstrap_context, get, pinned_context

CLUSTER_INFO = "/api/v1/namespaces/kube-public/configmaps/cluster-info"
_REFUSED = {
    401: "the API server refuses anonymous requests (--anonymous-auth=false), so no kubeadm"
    " join can discover it with a token either",
    403: "anonymous may not read cluster-info (kubeadm's RBAC rule for kube-public is missing)",
    404: "no kube-public/cluster-info ConfigMap: not a kubeadm control plane, or"
    " `kubeadm init phase bootstrap-token` never ran",
}


def _fetch(server: str, timeout: float, ca_pem: bytes | None) -> bytes:
    """The kubeconfig text of cluster-info; BuildError in one line naming the server."""
    try:
        context = bootstrap_context() if ca_pem is None else pinned_context(ca_pem)
        status, body, _headers = get(server, CLUSTER_INFO, context, timeout)
    except ssl.SSLError as exc:
        raise BuildError(f"{server}: cluster-info's CA cannot be loaded: {exc}") from None
    except ServerError as exc:
        if ca_pem is not None and "TLS verification" in str(exc):
            raise BuildError(
                f"{server}: the API server's certificate does not verify against the CA in"
                " its own cluster-info: possible man-in-the-middle; nothing written"
            ) from None
        raise BuildError(f"{server}: {exc}") from None
    if status in _REFUSED:
        raise BuildError(f"{server}: {CLUSTER_INFO} answered {status}: {_REFUSED[status]}")
    if status != 200:
        later = "; try again later" if status >= 500 or status == 429 else ""
        raise BuildError(f"{server}: {CLUSTER_INFO} answered {status}{later}")
    try:
        config_map = json.loads(body)
        text = config_map["data"]["kubeconfig"]
    except (ValueError, KeyError, TypeError):
        raise BuildError(
            f"{server}: {CLUSTER_INFO} is not a ConfigMap with data.kubeconfig: not kubeadm's"
            " cluster-info"
        ) from None
    if not isinstance(text, str):
        raise BuildError(f"{server}: cluster-info's data.kubeconfig is not text")
    return text.encode()


def _cluster(kubeconfig: dict[str, Any]) -> dict[str, Any]:
    """The kubeconfig's unnamed cluster, else its current context's (as kubeadm picks)."""
    clusters = {
        c.get("name", ""): c.get("cluster") or {}
        for c in kubeconfig.get("clusters") or []
        if isinstance(c, dict)
    }
    if "" in clusters:
        return dict(clusters[""])
    current = kubeconfig.get("current-context", "")
    for context in kubeconfig.get("contexts") or []:
        if isinstance(context, dict) and context.get("name") == current:
            name = (context.get("context") or {}).get("cluster", "")
            if name in clusters:
                return dict(clusters[name])
    raise ValueError("no unnamed cluster and no current context's cluster")


def ca_of(kubeconfig_text: bytes) -> bytes:
    """The PEM CA bundle in a cluster-info kubeconfig; ValueError saying what is missing."""
    try:
        kubeconfig = yaml.safe_load(kubeconfig_text)
    except yaml.YAMLError:
        raise ValueError("its kubeconfig is not YAML") from None
    if not isinstance(kubeconfig, dict):
        raise ValueError("its kubeconfig is not a mapping")
    data = _cluster(kubeconfig).get("certificate-authority-data")
    if not isinstance(data, str) or not data:
        raise ValueError("its cluster has no certificate-authority-data")
    try:
        pem = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("its certificate-authority-data is not base64") from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise ValueError("its certificate-authority-data holds no PEM certificate")
    from cryptography import x509

    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ValueError("its certificate-authority-data does not parse as certificates") from None
    return pem


def fetch_ca(server: str, timeout: float) -> bytes:
    """The cluster CA (PEM) that `server` publishes in cluster-info, fetched anonymously, then
    confirmed over TLS that trusts only it."""
    first = _fetch(server, timeout, None)
    try:
        ca_pem = ca_of(first)
    except ValueError as exc:
        raise BuildError(f"{server}: cluster-info: {exc}") from None
    if _fetch(server, timeout, ca_pem) != first:
        raise BuildError(
            f"{server}: cluster-info changed between two reads: possible man-in-the-middle;"
            " nothing written"
        )
    return ca_pem
