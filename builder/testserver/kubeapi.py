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
| a cordoned node (`spec.unschedulable`) carries the `node.kubernetes.io/unschedulable:NoSchedule` taint and shows `Ready,SchedulingDisabled` | kube-controller-manager nodelifecycle (TaintNodeUnschedulable); printNode |
| a watch sends DELETED with the last state of a Node that is gone | k8s.io/apimachinery/pkg/watch |
| other methods, pods, evictions and Secrets: kubeobjects.py | - |
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

K8S_VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.5+k3s1", "platform": "linux/arm64"}
GRACE_SECONDS = 40.0
JSON = "application/json"
UNSCHEDULABLE = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}


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
    unschedulable: bool = False
    annotations: dict[str, str] = field(default_factory=dict)

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

    def remove(self, name: str) -> bool:
        """The Node is deleted; False when there was none."""
        with self.lock:
            self.version += 1
            return self.nodes.pop(name, None) is not None

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
            "annotations": dict(n.annotations),
        },
        "spec": {"unschedulable": True, "taints": [UNSCHEDULABLE]} if n.unschedulable else {},
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


def _status(code: int, reason: str, message: str, details: dict[str, str] | None = None) -> Reply:
    body: dict[str, object] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return Reply(code, body=json.dumps(body).encode())


def _json(obj: object) -> Reply:
    return Reply(200, body=json.dumps(obj).encode())


# (method, path, query parameters, body) -> the answer, or None for paths it does not serve
Writer = Callable[[str, str, dict[str, str], bytes], "Reply | None"]


class KubeApi:
    """Answers Kubernetes API requests from a `NodeStore`, for holders of `admin_token`;
    `writer` (kubeobjects.Objects.answer) takes the rest first."""

    def __init__(self, store: NodeStore, admin_token: str, writer: Writer | None = None) -> None:
        self.store = store
        self.admin_token = admin_token
        self.writer = writer

    def handles(self, path: str) -> bool:
        return path.split("?", 1)[0] in ("/version", "/api", "/api/v1", "/apis") or path.startswith(
            "/api/v1/nodes"
        )

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes = b"") -> Reply:
        path, _, query = target.partition("?")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        auth = headers.get("authorization", "")
        if not hmac.compare_digest(auth.encode(), f"Bearer {self.admin_token}".encode()):
            return _status(401, "Unauthorized", "Unauthorized")
        if self.writer is not None:
            params["content-type"] = headers.get("content-type", "")
            written = self.writer(method, path, params, body)
            if written is not None:
                return written
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
        return _status(
            404, "NotFound", f'nodes "{name}" not found', {"name": name, "kind": "nodes"}
        )

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
                gone = set(seen) - {node["metadata"]["name"] for node in nodes}
                for name in sorted(gone):
                    del seen[name]
                    last = {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name}}
                    yield json.dumps({"type": "DELETED", "object": last}).encode() + b"\n"
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
            "verbs": ["delete", "get", "list", "patch", "watch"],
            "shortNames": ["no"],
        },
        {
            "name": "pods",
            "singularName": "pod",
            "namespaced": True,
            "kind": "Pod",
            "verbs": ["get", "list"],
            "shortNames": ["po"],
        },
        {
            "name": "pods/eviction",
            "singularName": "",
            "namespaced": True,
            "group": "policy",
            "version": "v1",
            "kind": "Eviction",
            "verbs": ["create"],
        },
        {
            "name": "secrets",
            "singularName": "secret",
            "namespaced": True,
            "kind": "Secret",
            "verbs": ["delete", "get"],
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
        cordoned = ",SchedulingDisabled" if node["spec"].get("unschedulable") else ""
        rows.append(
            {
                "cells": [
                    meta["name"],
                    ("Ready" if ready else "NotReady") + cordoned,
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
