"""The writes on the test server's Kubernetes API, and the objects besides Nodes that
`pifleet node retire` and `kubectl cordon`, `drain` and `delete node` use: pods, their
eviction, the node-password Secrets. Shapes and errors are the real apiserver's.

| rule | follows |
|---|---|
| `PATCH /api/v1/nodes/<n>` (merge or strategic-merge patch) sets `spec.unschedulable` (cordon sends `{"spec":{"unschedulable":true}}`, uncordon `null`) and merges `metadata.labels`/`annotations` (null removes); a JSON patch -> 415 here; other fields -> 422 (the test server holds no others) | kubectl pkg/drain/cordon.go:PatchOrReplaceWithContext; apiserver handlers/patch.go |
| `DELETE /api/v1/nodes/<n>`: 200 with the Node, which is gone; absent -> 404 `nodes "<n>" not found` | kube-apiserver registry/core/node |
| deleting a Node labelled `node-role.kubernetes.io/etcd` removes the etcd member its `etcd.k3s.cattle.io/node-name` annotation names (server.py, etcd.py) | k3s pkg/etcd/member_controller.go:onRemove |
| `GET /api/v1/pods?fieldSelector=spec.nodeName=<n>` (and per namespace) is a PodList; another field label -> 400 `field label not supported: <label>` | registry/core/pod/strategy.go:ToSelectableFields |
| `POST .../namespaces/<ns>/pods/<p>/eviction` (policy/v1 Eviction): no PodDisruptionBudget -> 201 Status Success, the pod is deleted; a pod a budget protects -> 429 `Cannot evict pod as it would violate the pod's disruption budget.`; absent -> 404 `pods "<p>" not found`; a body naming another pod -> 400 | registry/core/pod/storage/eviction.go |
| `GET`/`DELETE /api/v1/namespaces/kube-system/secrets/<node>.node-password.k3s`: type `k3s.cattle.io/node-password`, `data.hash`; once deleted, the server no longer knows the node's password, so a re-flashed node with a new one is accepted | k3s pkg/nodepassword/nodepassword.go: getSecretName, Ensure, Delete |
| errors are a metav1.Status with reason, code and details `{name, kind}` | apimachinery pkg/api/errors: NewNotFound, NewTooManyRequests |
| a caller RBAC or the Node authorizer refuses: 403 `<resource> "<name>" is forbidden: User "<u>" cannot <verb> resource "<resource>" in API group "" at the cluster scope` (or `in the namespace "<ns>"`) | apiserver endpoints/handlers/responsewriters/errors.go:forbiddenMessage |
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from builder.testserver import rules
from builder.testserver.kubeapi import JSON, NodeStore, Reply

PASSWORD_SECRET = re.compile(r"^(.+)\.node-password\.k3s$")
PATCH_TYPES = ("application/merge-patch+json", "application/strategic-merge-patch+json")
MIRROR = "kubernetes.io/config.mirror"
PDB_MESSAGE = "Cannot evict pod as it would violate the pod's disruption budget."


class Cluster(Protocol):
    """What the API reaches beyond its Nodes: the server's records (server.py)."""

    def delete_node(self, node: str) -> bool: ...

    def node_password_hash(self, node: str) -> str | None: ...

    def forget_node_password(self, node: str) -> bool: ...


@dataclass
class Pod:
    namespace: str
    name: str
    node: str
    owner: str = ""  # the controller's kind: ReplicaSet, DaemonSet, ... ("" for a bare pod)
    mirror: bool = False  # a static pod's mirror (the kubelet's, annotated)
    protected: bool = False  # a PodDisruptionBudget allows no disruption now

    @property
    def uid(self) -> str:
        digest = hashlib.sha256(f"{self.namespace}/{self.name}".encode()).hexdigest()
        return f"{digest[:8]}-{digest[8:12]}-4{digest[13:16]}-8{digest[17:20]}-{digest[20:32]}"

    def json(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace, "uid": self.uid}
        if self.mirror:
            meta["annotations"] = {MIRROR: self.uid}
        if self.owner:
            meta["ownerReferences"] = [
                {"apiVersion": "apps/v1", "kind": self.owner, "name": f"{self.name}-owner",
                 "uid": self.uid, "controller": True, "blockOwnerDeletion": True},
            ]  # fmt: skip
        return {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": meta,
            "spec": {
                "nodeName": self.node,
                "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}],
            },
            "status": {"phase": "Running"},
        }


def _reply(code: int, obj: object) -> Reply:
    return Reply(code, JSON, json.dumps(obj).encode())


def _failure(code: int, message: str, name: str = "", kind: str = "") -> Reply:
    details = {"name": name, "kind": kind} if name else None
    return Reply(code, JSON, rules.status_body(code, message, details))


def _success(code: int, name: str, kind: str) -> Reply:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "kind": kind}, "code": code}  # fmt: skip
    return _reply(code, body)


@dataclass
class Objects:
    """Pods and the writes, over the `NodeStore` and the server's records (`cluster`)."""

    store: NodeStore
    cluster: Cluster
    pods: dict[tuple[str, str], Pod] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_pod(self, pod: Pod) -> None:
        with self.lock:
            self.pods[(pod.namespace, pod.name)] = pod

    def answer(self, method: str, path: str, params: dict[str, str], body: bytes) -> Reply | None:
        """The answer to a request on a path this module serves, else None."""
        parts = path.strip("/").split("/")[2:]  # after api/v1
        if parts[:1] == ["nodes"] and len(parts) == 2 and method in ("PATCH", "DELETE"):
            return self._node(method, parts[1], params.get("content-type", ""), body)
        if parts == ["pods"]:
            return self._list("", params) if method == "GET" else _405()
        namespace, kind, rest = (parts[1], parts[2], parts[3:]) if len(parts) >= 3 else ("", "", [])
        if parts[:1] != ["namespaces"] or kind not in ("pods", "secrets"):
            return None
        if kind == "pods" and not rest:
            return self._list(namespace, params) if method == "GET" else _405()
        if kind == "pods":
            return self._pod(method, namespace, rest, body)
        return self._secret(method, namespace, rest[0]) if len(rest) == 1 else None

    # -- nodes -------------------------------------------------------------------

    def _node(self, method: str, name: str, content_type: str, body: bytes) -> Reply:
        _version, nodes = self.store.snapshot()
        found = [n for n in nodes if n["metadata"]["name"] == name]
        if not found:
            return _failure(404, f'nodes "{name}" not found', name, "nodes")
        if method == "DELETE":
            self.cluster.delete_node(name)
            return _reply(200, found[0])
        if content_type.split(";")[0].strip() not in PATCH_TYPES:
            return _failure(415, f"the test server does not apply patches of type {content_type!r}")
        try:
            patch = json.loads(body)
            self._patch(name, patch)
        except (ValueError, TypeError, AttributeError) as exc:
            return _failure(422, f'Node "{name}" is invalid: {exc}', name, "nodes")
        _version, nodes = self.store.snapshot()
        return _reply(200, next(n for n in nodes if n["metadata"]["name"] == name))

    def _patch(self, name: str, patch: dict[str, Any]) -> None:
        spec, meta = patch.get("spec") or {}, patch.get("metadata") or {}
        if set(patch) - {"spec", "metadata"} or set(spec) - {"unschedulable"}:
            raise ValueError("only spec.unschedulable and metadata labels/annotations can change")
        if set(meta) - {"labels", "annotations"}:
            raise ValueError("only metadata labels and annotations can change")
        with self.store.lock:
            record = self.store.nodes[name]
            if "unschedulable" in spec:
                record.unschedulable = bool(spec["unschedulable"])
            for key, held in (("labels", record.labels), ("annotations", record.annotations)):
                for k, v in (meta.get(key) or {}).items():
                    if v is None:
                        held.pop(k, None)
                    else:
                        held[k] = str(v)
            self.store.version += 1

    # -- pods --------------------------------------------------------------------

    def _list(self, namespace: str, params: dict[str, str]) -> Reply:
        node = None
        for term in filter(None, params.get("fieldSelector", "").split(",")):
            label, _, value = term.partition("=")
            if label != "spec.nodeName":
                return _failure(400, f"field label not supported: {label}")
            node = value.lstrip("=")
        with self.lock:
            items = [p.json() for p in self.pods.values()
                     if (not namespace or p.namespace == namespace) and node in (None, p.node)]  # fmt: skip
        listing = {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}}
        return _reply(200, {**listing, "items": items})

    def _pod(self, method: str, namespace: str, rest: list[str], body: bytes) -> Reply:
        name = rest[0]
        with self.lock:
            pod = self.pods.get((namespace, name))
        if rest[1:] == ["eviction"] and method == "POST":
            return self._evict(namespace, name, pod, body)
        if rest[1:] or method != "GET":
            return _405()
        if pod is None:
            return _failure(404, f'pods "{name}" not found', name, "pods")
        return _reply(200, pod.json())

    def _evict(self, namespace: str, name: str, pod: Pod | None, body: bytes) -> Reply:
        try:
            asked = json.loads(body)["metadata"]["name"]
        except (ValueError, KeyError, TypeError):
            return _failure(400, "the body is not an Eviction")
        if asked != name:
            return _failure(400, "name in URL does not match name in Eviction object")
        if pod is None:
            return _failure(404, f'pods "{name}" not found', name, "pods")
        if pod.protected:
            return _failure(429, PDB_MESSAGE, name, "pods")
        with self.lock:
            self.pods.pop((namespace, name), None)
        return _success(201, name, "pods")

    # -- node-password secrets ---------------------------------------------------

    def _secret(self, method: str, namespace: str, name: str) -> Reply:
        match = PASSWORD_SECRET.match(name)
        digest = self.cluster.node_password_hash(match.group(1)) if match else None
        if namespace != "kube-system" or match is None or digest is None:
            return _failure(404, f'secrets "{name}" not found', name, "secrets")
        if method == "DELETE":
            self.cluster.forget_node_password(match.group(1))
            return _success(200, name, "secrets")
        if method != "GET":
            return _405()
        secret = {
            "kind": "Secret",
            "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace},
            "immutable": True,
            "type": "k3s.cattle.io/node-password",
            "data": {"hash": base64.b64encode(digest.encode()).decode()},
        }
        return _reply(200, secret)


VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def forbidden(user: str, method: str, path: str) -> str:
    """The apiserver's 403 message for `user` asking `method path` (forbiddenMessage)."""
    parts = path.strip("/").split("/")[2:]
    namespace = ""
    if parts[:1] == ["namespaces"] and len(parts) >= 3:
        namespace, parts = parts[1], parts[2:]
    resource = "/".join(parts[:1] + parts[2:3])
    name = parts[1] if len(parts) > 1 else ""
    verb = VERBS.get(method, "get" if name else "list")
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    subject = f'{parts[0] if parts else resource} "{name}"' if name else resource
    return f'{subject} is forbidden: User "{user}" cannot {verb} resource "{resource}" in API group "" {scope}'


def _405() -> Reply:
    return _failure(405, "the server does not allow this method on the requested resource")
