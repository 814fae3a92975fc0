"""The objects the kubeadm test server keeps: the cluster-info kubeconfig as kubeadm writes
it, and the CertificateSigningRequests and Nodes it stores (rules: kubeadm_rules.py)."""

from __future__ import annotations

import base64
import datetime
import json
import threading
import uuid
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from builder.testserver import kubeadm_rules as rules
from builder.testserver.ca import CertificateAuthority
from builder.testserver.rules import status_body

Answer = tuple[int, bytes]


def cluster_info_kubeconfig(server: str, ca_pem: bytes, form: str = "yaml") -> str:
    """What kubeadm's clusterinfo phase stores: `clientcmd.Write` of one unnamed cluster
    (sigs.k8s.io/yaml output: keys sorted, sequences at their key's indent)."""
    ca = base64.b64encode(ca_pem).decode()
    if form == "json":
        config: dict[str, Any] = {
            "apiVersion": "v1",
            "clusters": [
                {"cluster": {"certificate-authority-data": ca, "server": server}, "name": ""}
            ],
            "contexts": None,
            "current-context": "",
            "kind": "Config",
            "preferences": {},
            "users": None,
        }
        return json.dumps(config, indent=2)
    return (
        "apiVersion: v1\nclusters:\n- cluster:\n"
        f"    certificate-authority-data: {ca}\n    server: {server}\n"
        '  name: ""\ncontexts: null\ncurrent-context: ""\nkind: Config\n'
        "preferences: {}\nusers: null\n"
    )


def admin_kubeconfig(server: str, ca_pem: bytes, cert: x509.Certificate, key_pem: bytes) -> bytes:
    """kubeadm's admin.conf: the cluster, and the admin's certificate and key embedded."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "kubernetes-admin@kubernetes",
        "clusters": [{"name": "kubernetes", "cluster": {
            "server": server, "certificate-authority-data": b64(ca_pem)}}],
        "contexts": [{"name": "kubernetes-admin@kubernetes", "context": {
            "cluster": "kubernetes", "user": "kubernetes-admin"}}],
        "users": [{"name": "kubernetes-admin", "user": {
            "client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)}}],
    }  # fmt: skip
    return (json.dumps(config, indent=2) + "\n").encode()


def _stamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(name: str, namespace: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": str(uuid.uuid4()), "creationTimestamp": _stamp()}
    if namespace:
        meta["namespace"] = namespace
    meta["resourceVersion"] = str(uuid.uuid4().int % 100000)
    return meta


def configmap(name: str, namespace: str, data: dict[str, str]) -> bytes:
    body = {"kind": "ConfigMap", "apiVersion": "v1", "metadata": _meta(name, namespace)}
    body["data"] = data
    return json.dumps(body).encode()


def not_found(resource: str, name: str, group: str = "") -> Answer:
    kind = f"{resource}.{group}" if group else resource
    return 404, status_body(404, f'{kind} "{name}" not found', {"name": name, "kind": resource})


def invalid(kind: str, name: str, why: str) -> Answer:
    text = f'{kind}.certificates.k8s.io "{name}" is invalid: {why}'
    return 422, status_body(422, text, {"name": name, "kind": "certificatesigningrequests"})


def _json_body(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class Store:
    """CertificateSigningRequests (approved and signed at once, as the controllers would a
    moment later) and Nodes, in memory."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca
        self.lock = threading.Lock()
        self.csrs: dict[str, dict[str, Any]] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self._serial = 0

    def create_csr(self, caller: rules.Caller, body: bytes) -> Answer:
        obj = _json_body(body)
        if obj is None or obj.get("kind") != "CertificateSigningRequest":
            return 400, status_body(400, "the body is not a CertificateSigningRequest")
        meta = obj.get("metadata") or {}
        with self.lock:
            self._serial += 1
            name = str(meta.get("name") or f"{meta.get('generateName') or ''}{self._serial:05d}")
            if not name:
                return invalid("CertificateSigningRequest", "", "metadata.name: Required value")
            if name in self.csrs:
                text = f'certificatesigningrequests.certificates.k8s.io "{name}" already exists'
                return 409, status_body(409, text)
        spec = obj.get("spec")
        why, csr = rules.csr_problem(spec)
        if why or csr is None or not isinstance(spec, dict):
            return invalid("CertificateSigningRequest", name, why)
        spec = {**spec, "username": caller.user, "groups": sorted(caller.groups)}
        stored: dict[str, Any] = {
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": _meta(name),
            "spec": spec,
            "status": self._decide(spec, csr),
        }
        with self.lock:
            self.csrs[name] = stored
        return 201, json.dumps(stored).encode()

    def _decide(self, spec: dict[str, Any], csr: x509.CertificateSigningRequest) -> dict[str, Any]:
        """csrapproving, then the kube-apiserver-client-kubelet signer."""
        message = rules.approval(spec, csr)
        if message is None:
            return {}
        condition = {
            "type": "Approved",
            "status": "True",
            "reason": "AutoApproved",
            "message": message,
            "lastUpdateTime": _stamp(),
        }
        cert = self.ca.issue(csr.subject, csr.public_key(), ExtendedKeyUsageOID.CLIENT_AUTH)
        pem = cert.public_bytes(serialization.Encoding.PEM)
        return {"conditions": [condition], "certificate": base64.b64encode(pem).decode()}

    def get_csr(self, name: str) -> Answer:
        with self.lock:
            stored = self.csrs.get(name)
        if stored is None:
            return not_found("certificatesigningrequests", name, "certificates.k8s.io")
        return 200, json.dumps(stored).encode()

    def list_csrs(self) -> Answer:
        with self.lock:
            items = list(self.csrs.values())
        body: dict[str, Any] = {
            "kind": "CertificateSigningRequestList",
            "apiVersion": "certificates.k8s.io/v1",
        }
        body.update({"metadata": {"resourceVersion": "1"}, "items": items})
        return 200, json.dumps(body).encode()

    def create_node(self, caller: rules.Caller, body: bytes) -> Answer:
        obj = _json_body(body)
        if obj is None or obj.get("kind") != "Node":
            return 400, status_body(400, "the body is not a Node")
        refused = rules.admit_node(caller, obj)
        if refused:
            return 403, status_body(403, refused)
        name = str((obj.get("metadata") or {}).get("name") or "")
        if not name:
            return 422, status_body(422, 'Node "" is invalid: metadata.name: Required value')
        node = {**obj, "apiVersion": "v1", "metadata": {**obj["metadata"], **_meta(name)}}
        with self.lock:
            if name in self.nodes:
                return 409, status_body(409, f'nodes "{name}" already exists')
            self.nodes[name] = node
        return 201, json.dumps(node).encode()

    def patch_node_status(self, name: str, body: bytes) -> Answer:
        """A merge patch of `status`: conditions merged by their `type` (the strategic-merge
        key of NodeStatus.conditions), other status fields replaced."""
        patch = _json_body(body)
        status = (patch or {}).get("status")
        if not isinstance(status, dict):
            return 400, status_body(400, "the patch has no status")
        with self.lock:
            node = self.nodes.get(name)
            if node is None:
                return not_found("nodes", name)
            merged = {**(node.get("status") or {}), **status}
            if "conditions" in status:
                by_type = {
                    c.get("type"): c for c in (node.get("status") or {}).get("conditions", [])
                }
                by_type.update({c.get("type"): c for c in status["conditions"] or []})
                merged["conditions"] = list(by_type.values())
            node["status"] = merged
        return 200, json.dumps(node).encode()

    def get_node(self, name: str) -> Answer:
        with self.lock:
            node = self.nodes.get(name)
        if node is None:
            return not_found("nodes", name)
        return 200, json.dumps(node).encode()

    def list_nodes(self) -> Answer:
        with self.lock:
            items = list(self.nodes.values())
        body: dict[str, Any] = {"kind": "NodeList", "apiVersion": "v1"}
        body["metadata"] = {"resourceVersion": "1"}
        body["items"] = items
        return 200, json.dumps(body).encode()
