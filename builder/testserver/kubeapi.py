"""The slice of the Kubernetes API that `pifleet status` and `kubectl get nodes` read.

K3s serves the Kubernetes API on the supervisor's port: paths the supervisor
does not route go to the embedded kube-apiserver (pkg/server/router.go). The
test server answers those paths from its own node records, with the shapes of
the real API so that clients this project did not write (kubectl, the
official `kubernetes` Python client) can read them.

| rule | follows |
|---|---|
| `/version` gives major, minor, gitVersion (`v1.33.5+k3s1` form) | k8s.io/apimachinery/pkg/version: Info |
| `/api` lists `v1`; `/api/v1` lists the `nodes` resource (cluster-scoped, verbs get, list, watch); `/apis` lists no group | k8s discovery: APIVersions, APIResourceList, APIGroupList |
| `GET /api/v1/nodes` is a NodeList with `metadata.resourceVersion`; `/api/v1/nodes/<name>` a Node, else 404 Status `nodes "<name>" not found` | kube-apiserver registry/core/node |
| `Accept: application/json;as=Table;…` gets a meta.k8s.io Table with kubectl's node columns (Name, Status, Roles, Age, Version) | kube-apiserver TableConvertor for nodes (pkg/printers/internalversion: printNode) |
| `?watch=1` streams `{"type": ADDED/MODIFIED/DELETED, "object": Node}` lines, from `resourceVersion` when given, until `timeoutSeconds` | k8s.io/apimachinery/pkg/watch |
| Ready is True while the kubelet posts status within the grace period, then Unknown with reason NodeStatusUnknown, "Kubelet stopped posting node status." | kube-controller-manager node lifecycle controller (`--node-monitor-grace-period`, 40 s default before v1.32, 50 s after) |
| no or wrong credentials: 401 Status `Unauthorized` | kube-apiserver authentication filter |
| roles come from `node-role.kubernetes.io/<role>` labels, `<none>` when there are none | pkg/printers/internalversion: findNodeRoles |
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs

K8S_VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.5+k3s1", "platform": "linux/arm64"}
GRACE_SECONDS = 40.0
JSON = "application/json"


def _stamp(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class NodeRecord:
    name: str
    labels: dict[str, str]
    created: float
    heartbeat: float
    kubelet_version: str = "v1.33.5+k3s1"
    transition: float = 0.0
    was_ready: bool = True

    @property
    def uid(self) -> str:
        digest = hashlib.sha256(self.name.encode()).hexdigest()
        return f"{digest[:8]}-{digest[8:12]}-4{digest[13:16]}-8{digest[17:20]}-{digest[20:32]}"


@dataclass
class Reply:
    status: int
    content_type: str = JSON
    body: bytes = b""
    stream: Iterator[bytes] | None = None


@dataclass
class NodeStore:
    """Nodes as the API server holds them; `grace` is the node monitor grace period (s)."""

    grace: float = GRACE_SECONDS
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    version: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, name: str, labels: dict[str, str] | None = None) -> None:
        now = time.time()
        with self.lock:
            old = self.nodes.get(name)
            self.nodes[name] = NodeRecord(
                name, dict(labels or {}), old.created if old else now, now, transition=now
            )
            self.version += 1

    def heartbeat(self, name: str) -> None:
        """The kubelet posted its status (a Lease renewal in real Kubernetes)."""
        with self.lock:
            if name in self.nodes:
                self.nodes[name].heartbeat = time.time()
                self.version += 1

    def ready(self, node: NodeRecord, now: float) -> bool:
        return now - node.heartbeat <= self.grace

    def snapshot(self) -> tuple[int, list[dict[str, Any]]]:
        """(resourceVersion, Node objects), with Ready derived from heartbeats now."""
        now = time.time()
        with self.lock:
            for node in self.nodes.values():
                ready = self.ready(node, now)
                if ready != node.was_ready:
                    node.was_ready, node.transition = ready, now
                    self.version += 1
            return self.version, [_node(n, now) for n in self.nodes.values()]


def _node(n: NodeRecord, now: float) -> dict[str, Any]:
    if n.was_ready:
        condition = {
            "status": "True",
            "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
        }
    else:
        condition = {
            "status": "Unknown",
            "reason": "NodeStatusUnknown",
            "message": "Kubelet stopped posting node status.",
        }
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": n.name,
            "uid": n.uid,
            "resourceVersion": str(int(n.heartbeat * 1000)),
            "creationTimestamp": _stamp(n.created),
            "labels": {"kubernetes.io/hostname": n.name, "kubernetes.io/os": "linux", **n.labels},
        },
        "spec": {},
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    **condition,
                    "lastHeartbeatTime": _stamp(n.heartbeat),
                    "lastTransitionTime": _stamp(n.transition),
                },
            ],
            "nodeInfo": {
                # Every field of NodeSystemInfo is required in the API (clients refuse a Node
                # without them); the values are what a K3s agent on a Pi reports.
                "architecture": "arm64",
                "bootID": n.uid,
                "containerRuntimeVersion": "containerd://2.0.5-k3s1",
                "kernelVersion": "6.12.47+rpt-rpi-v8",
                "kubeProxyVersion": n.kubelet_version,
                "kubeletVersion": n.kubelet_version,
                "machineID": n.uid.replace("-", ""),
                "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 13 (trixie)",
                "systemUUID": n.uid,
            },
        },
    }


def _status(code: int, reason: str, message: str) -> Reply:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return Reply(code, body=json.dumps(body).encode())


def _json(obj: object) -> Reply:
    return Reply(200, body=json.dumps(obj).encode())


class KubeApi:
    """Answers Kubernetes API requests from a `NodeStore`, for holders of `admin_token`."""

    def __init__(self, store: NodeStore, admin_token: str) -> None:
        self.store = store
        self.admin_token = admin_token

    def handles(self, path: str) -> bool:
        return path.split("?", 1)[0] in ("/version", "/api", "/api/v1", "/apis") or path.startswith(
            "/api/v1/nodes"
        )

    def answer(self, method: str, target: str, headers: dict[str, str]) -> Reply:
        path, _, query = target.partition("?")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        auth = headers.get("authorization", "")
        if not hmac.compare_digest(auth.encode(), f"Bearer {self.admin_token}".encode()):
            return _status(401, "Unauthorized", "Unauthorized")
        if method != "GET":
            return _status(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        if path == "/version":
            return _json(K8S_VERSION)
        if path == "/api":
            return _json(
                {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
            )
        if path == "/apis":
            return _json({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
        if path == "/api/v1":
            return _json(_RESOURCES)
        if path == "/api/v1/nodes":
            if params.get("watch") in ("1", "true"):
                return self._watch(params)
            return self._list(headers.get("accept", ""))
        name = path.removeprefix("/api/v1/nodes/")
        _version, nodes = self.store.snapshot()
        for node in nodes:
            if node["metadata"]["name"] == name:
                return _json(node)
        return _status(404, "NotFound", f'nodes "{name}" not found')

    def _list(self, accept: str) -> Reply:
        version, nodes = self.store.snapshot()
        if "as=Table" in accept:
            return _json(_table(nodes, version))
        return _json(
            {
                "kind": "NodeList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(version)},
                "items": nodes,
            }
        )

    def _watch(self, params: dict[str, str]) -> Reply:
        deadline = time.monotonic() + min(float(params.get("timeoutSeconds", 300)), 1800)

        def events() -> Iterator[bytes]:
            seen: dict[str, str] = {}
            while time.monotonic() < deadline:
                _version, nodes = self.store.snapshot()
                for node in nodes:
                    meta = node["metadata"]
                    key = json.dumps(node["status"], sort_keys=True)
                    name = meta["name"]
                    if seen.get(name) != key:
                        kind = "MODIFIED" if name in seen else "ADDED"
                        seen[name] = key
                        yield json.dumps({"type": kind, "object": node}).encode() + b"\n"
                time.sleep(0.5)

        return Reply(200, stream=events())


_RESOURCES = {
    "kind": "APIResourceList",
    "groupVersion": "v1",
    "resources": [
        {
            "name": "nodes",
            "singularName": "node",
            "namespaced": False,
            "kind": "Node",
            "verbs": ["get", "list", "watch"],
            "shortNames": ["no"],
        },
    ],
}


def _age(created: str) -> str:
    then = datetime.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m"


def _table(nodes: list[dict[str, Any]], version: int) -> dict[str, Any]:
    rows = []
    for node in nodes:
        meta, status = node["metadata"], node["status"]
        labels: dict[str, str] = meta["labels"]
        roles = sorted(
            k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/")
        )
        ready = status["conditions"][0]["status"] == "True"
        rows.append(
            {
                "cells": [
                    meta["name"],
                    "Ready" if ready else "NotReady",
                    ",".join(roles) or "<none>",
                    _age(meta["creationTimestamp"]),
                    status["nodeInfo"]["kubeletVersion"],
                ],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": meta,
                },
            }
        )
    columns = [
        ("Name", "string"),
        ("Status", "string"),
        ("Roles", "string"),
        ("Age", "string"),
        ("Version", "string"),
    ]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": str(version)},
        "columnDefinitions": [
            {
                "name": n,
                "type": t,
                "format": "name" if n == "Name" else "",
                "description": n,
                "priority": 0,
            }
            for n, t in columns
        ],
        "rows": rows,
    }


def send(handler: BaseHTTPRequestHandler, reply: Reply) -> None:
    """Write `reply` on an HTTP/1.1 handler; a watch streams in chunks until it ends."""
    handler.send_response(reply.status)
    handler.send_header("Content-Type", reply.content_type)
    if reply.stream is None:
        handler.send_header("Content-Length", str(len(reply.body)))
        handler.end_headers()
        handler.wfile.write(reply.body)
        return
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    try:
        for chunk in reply.stream:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            handler.wfile.flush()
        handler.wfile.write(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        handler.close_connection = True


def kubeconfig(url: str, ca_pem: bytes, token: str) -> bytes:
    """A kubeconfig for the test server's API, as K3s writes /etc/rancher/k3s/k3s.yaml
    (cluster, user and context all named `default`), with a bearer token as the user."""
    ca = base64.b64encode(ca_pem).decode()
    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: {url}\n  name: default\n"
        "contexts:\n- context:\n    cluster: default\n    user: default\n  name: default\n"
        "current-context: default\npreferences: {}\n"
        f"users:\n- name: default\n  user:\n    token: {token}\n"
    ).encode()
