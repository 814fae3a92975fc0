"""The etcd members a K3s server with managed etcd shows a joining server, kept by the test
server (`K3sTestServer(etcd=True)`) as records in its registry: no etcd runs here.

| rule | follows |
|---|---|
| a member is named `<node name>-<first 8 hex of a UUID>`, once per data directory (`db/etcd/name`); the node name is the member name up to its last `-` | k3s pkg/etcd/etcd.go:setName, join (LastIndex) |
| `/db/info` lists the members, each with `name`, `peerURLs` (`https://<address>:2380`) and `clientURLs` (`:2379`) | etcd.go:infoHandler |
| a joining server adds itself as a learner (real: MemberAddAsLearner on :2379; here `POST /db/members` with `{"name", "peerURLs"}`) | etcd.go:join |
| a member's Node carries `node-role.kubernetes.io/etcd=true` (and control-plane) and the annotations `etcd.k3s.cattle.io/node-name` (the member name) and `etcd.k3s.cattle.io/node-address`; here the test server registers that Node when the member is added (the server's own kubelet and the metadata controller, in K3s) | pkg/etcd/metadata_controller.go; pkg/util/labels (ETCDRoleLabelKey) |
| deleting a Node with the etcd role removes the member its annotations name | pkg/etcd/member_controller.go:onRemove -> RemovePeer |
| refusing a joining server whose node name is already a member's is the joining server's own check (the stand-in's), not the answering server's | etcd.go:join ("duplicate node name found, please use a unique name for this node") |
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlsplit

ETCD_ROLE = "node-role.kubernetes.io/etcd"
NAME_ANNOTATION = "etcd.k3s.cattle.io/node-name"
ADDRESS_ANNOTATION = "etcd.k3s.cattle.io/node-address"
ROLE_LABELS = {ETCD_ROLE: "true", "node-role.kubernetes.io/control-plane": "true"}


def member_name(node: str) -> str:
    """A new member name for `node`, as setName makes it."""
    return f"{node}-{uuid.uuid4().hex[:8]}"


def node_of(member: str) -> str:
    """The node name in a member name (join's LastIndex rule)."""
    cut = member.rfind("-")
    return member[:cut] if cut > 1 else member


def members(registry: dict[str, Any]) -> dict[str, str]:
    """Member name -> peer URL."""
    held: dict[str, str] = registry.setdefault("members", {})
    return held


def add(registry: dict[str, Any], node: str, member: str, peer: str) -> dict[str, Any]:
    """`registry` with the member, and `node` among the Nodes."""
    members(registry)[member] = peer
    if node not in registry.setdefault("nodes", []):
        registry["nodes"].append(node)
    return registry


def forget(registry: dict[str, Any], node: str, member: str | None) -> dict[str, Any]:
    """`registry` without the Node `node`, nor `member` when it names one."""
    if node in registry.get("nodes", []):
        registry["nodes"].remove(node)
    if member:
        members(registry).pop(member, None)
    return registry


def info(registry: dict[str, Any]) -> dict[str, Any]:
    """The body of /db/info."""
    listed = []
    for name, peer in sorted(members(registry).items()):
        host = urlsplit(peer).hostname or "127.0.0.1"
        listed.append({"name": name, "peerURLs": [peer], "clientURLs": [f"https://{host}:2379"]})
    return {"members": listed}


def parse_add(body: bytes) -> tuple[str, str]:
    """(member name, peer URL) from a POST /db/members body; ValueError when it is not one."""
    data = json.loads(body)
    name, peers = data["name"], data["peerURLs"]
    if not isinstance(name, str) or not name or not isinstance(peers, list) or not peers:
        raise ValueError("a member needs a name and a peer URL")
    return name, str(peers[0])


def node_metadata(member: str, peer: str) -> tuple[dict[str, str], dict[str, str]]:
    """The labels and annotations of a member's Node."""
    address = urlsplit(peer).hostname or ""
    return dict(ROLE_LABELS), {NAME_ANNOTATION: member, ADDRESS_ANNOTATION: address}


def removed_member(labels: dict[str, str], annotations: dict[str, str]) -> str | None:
    """The member to remove when a Node with these labels and annotations is deleted."""
    if ETCD_ROLE not in labels:
        return None
    return annotations.get(NAME_ANNOTATION)
