"""The HTTP side of the kubeadm test server: authenticate, authorize, answer, record.
The decisions are kubeadm_rules.py's, the objects kubeadm_objects.py's, the state kubeadm.py's."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any

from builder.testserver import kubeadm_objects as objects
from builder.testserver import kubeadm_rules as rules
from builder.testserver.rules import status_body

JSON = "application/json"
VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.5", "platform": "linux/arm64"}
CORE_RESOURCES = [
    {"name": "configmaps", "namespaced": True, "kind": "ConfigMap", "verbs": ["get", "list"]},
    {"name": "nodes", "namespaced": False, "kind": "Node", "verbs": ["create", "get", "list"]},
    {"name": "nodes/status", "namespaced": False, "kind": "Node", "verbs": ["patch", "update"]},
]
CSR_RESOURCES = [
    {
        "name": "certificatesigningrequests",
        "namespaced": False,
        "kind": "CertificateSigningRequest",
        "verbs": ["create", "get", "list"],
    }
]


def discovery(path: str) -> dict[str, Any] | None:
    """The legacy discovery documents kubectl reads before a request (authenticated only)."""
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if path == "/api/v1":
        return {"kind": "APIResourceList", "groupVersion": "v1", "resources": CORE_RESOURCES}
    version = {"groupVersion": "certificates.k8s.io/v1", "version": "v1"}
    if path == "/apis":
        group = {"name": "certificates.k8s.io", "versions": [version], "preferredVersion": version}
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}
    if path == "/apis/certificates.k8s.io/v1":
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": "certificates.k8s.io/v1",
            "resources": CSR_RESOURCES,
        }
    return None


class KubeadmHandler(BaseHTTPRequestHandler):
    server_state: Any  # the KubeadmTestServer (kubeadm.py imports this module)
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        # TLS per connection, with the certificate the server shows now (forge modes).
        context = self.server_state.serving_context()
        self.request = context.wrap_socket(self.request, server_side=True)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # recorded in server.requests, never printed (headers carry tokens)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length", "0") or "0")
        return self.rfile.read(length) if length else b""

    def _subject(self) -> tuple[str, tuple[str, ...]] | None:
        """(CN, Os) of a client certificate the cluster CA signed (TLS verified it)."""
        getpeercert = getattr(self.connection, "getpeercert", None)
        cert = getpeercert() if getpeercert else None
        if not cert:
            return None
        common, orgs = "", []
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    common = str(value)
                elif key == "organizationName":
                    orgs.append(str(value))
        return common, tuple(orgs)

    def _send(self, who: str, status: int, body: bytes, kind: str = JSON) -> None:
        had = self.headers.get("Authorization") is not None
        self.server_state.record(self.command, self.path, who, had, status)
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _dispatch(self) -> None:
        state = self.server_state
        path, _, query = self.path.partition("?")
        body = self._body()
        caller = state.authenticate(self.headers.get("Authorization"), self._subject())
        if caller.error:
            return self._send("-", *rules.unauthorized())
        attrs = rules.attributes(self.command, path, query)
        if not attrs.is_resource and path not in rules.PUBLIC_INFO:
            document = discovery(path)
            if document is not None and rules.AUTHENTICATED in caller.groups:
                return self._send(caller.user, 200, json.dumps(document).encode())
        reason = rules.authorize(caller, attrs)
        if reason:
            return self._send(caller.user, *rules.forbidden(caller, attrs, reason))
        if path == "/version":
            return self._send(caller.user, 200, json.dumps(VERSION).encode())
        if path in rules.PUBLIC_INFO:
            return self._send(caller.user, 200, b"ok", "text/plain; charset=utf-8")
        status, answer = self._resource(caller, attrs, body)
        self._send(caller.user, status, answer)

    def _resource(
        self, caller: rules.Caller, attrs: rules.Attributes, body: bytes
    ) -> tuple[int, bytes]:
        state = self.server_state
        store: objects.Store = state.store
        key = (attrs.group, attrs.resource, attrs.verb)
        if key == ("", "configmaps", "get") and (attrs.namespace, attrs.name) == (
            "kube-public",
            "cluster-info",
        ):
            return 200, state.cluster_info_body()
        if key == ("certificates.k8s.io", "certificatesigningrequests", "create"):
            return store.create_csr(caller, body) if not attrs.name else (405, b"{}")
        if key == ("certificates.k8s.io", "certificatesigningrequests", "get"):
            return store.get_csr(attrs.name)
        if key == ("certificates.k8s.io", "certificatesigningrequests", "list"):
            return store.list_csrs()
        if key == ("", "nodes", "create") and not attrs.name:
            return store.create_node(caller, body)
        if key in (("", "nodes", "patch"), ("", "nodes", "update")) and attrs.subresource:
            return store.patch_node_status(attrs.name, body)
        if key == ("", "nodes", "get"):
            return store.get_node(attrs.name)
        if key == ("", "nodes", "list"):
            return store.list_nodes()
        return 404, status_body(404, "the server could not find the requested resource")
