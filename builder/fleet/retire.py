"""`pifleet node retire NAME --kubeconfig FILE [--yes]`: take a node out of the cluster before
its card is re-flashed, so that it can join again under the same name.

A re-flashed server keeps its name but not its etcd data, and K3s refuses to join it while the
cluster's etcd still has a member for that name: "etcd cluster join failed: duplicate node name
found, please use a unique name for this node" (k3s pkg/etcd/etcd.go:join), after which
k3s.service restarts and fails again, forever. A re-flashed node also has a new node password,
which the server refuses while the old one's Secret exists ("Node password rejected",
pkg/nodepassword/validate.go). Deleting the Node makes K3s remove its etcd member
(pkg/etcd/member_controller.go:onRemove); deleting the Secret lets the new password in.

The steps, one progress line each, as kubectl takes them (k8s.io/kubectl pkg/drain):

| step | what | follows |
|---|---|---|
| look | GET the Node: absent is exit 1, "not found", before anything changes | - |
| cordon | PATCH `{"spec":{"unschedulable":true}}` as a strategic-merge patch | pkg/drain/cordon.go |
| drain | list the pods with `fieldSelector=spec.nodeName=NAME` in all namespaces; leave DaemonSet pods (their controller ignores unschedulable and would make them again) and mirror pods (annotation `kubernetes.io/config.mirror`: the kubelet's static pods, which the API cannot remove); evict the others with a policy/v1 Eviction; 429 (a PodDisruptionBudget) is retried every 5 s until `--timeout`, 404 means already gone; then wait until each is gone (404, or a new UID) | pkg/drain/filters.go (daemonSetFilter, mirrorPodFilter); drain.go:evictPods, waitForDelete |
| delete | DELETE the Node, then wait for 404: K3s's etcd controller holds a Node with a finalizer until its member is removed | member_controller.go (wrangler OnRemove) |
| password | DELETE `kube-system/<name>.node-password.k3s`; 404 means already gone (newer K3s deletes it with its Node) | pkg/nodepassword/nodepassword.go:getSecretName, Delete; controller.go |

Like `kubectl drain --ignore-daemonsets --delete-emptydir-data --force`: the card is about to be
re-flashed, so a pod's emptyDir data, or a pod no controller makes again, is lost either way.

Without `--yes` it asks on a terminal and refuses elsewhere (exit 2). Errors are one line: exit 2
for bad input (the name, the kubeconfig), 1 for what the cluster says or does not say. Every
value from the cluster is printed inert.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from builder.util.errors import BuildError, UserError
from builder.util.terminal import inert

TIMEOUT = 300.0  # seconds for the whole retire (--timeout)
RETRY = 5.0  # seconds between evictions a disruption budget refused (kubectl's default)
POLL = 0.5  # seconds between reads while waiting for a pod or the Node to be gone
NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
MIRROR = "kubernetes.io/config.mirror"
STRATEGIC = "application/strategic-merge-patch+json"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`pifleet node retire` (cli.py imports this module to build its parser: keep it light)."""
    p = sub.add_parser("node", help="the cluster's nodes: retire one before its card is re-flashed")
    nsub = p.add_subparsers(dest="node_command", required=True, metavar="ACTION")
    retire = nsub.add_parser(
        "retire", help="cordon, drain and delete a node and its node password (before re-flashing)"
    )
    retire.add_argument("name", help="the node's name (the device's hostname)")
    retire.add_argument(
        "--kubeconfig", required=True, metavar="FILE", help="an admin kubeconfig (K3s: k3s.yaml)"
    )
    retire.add_argument("--yes", action="store_true", help="do not ask (scripts)")
    retire.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds, in all")
    retire.set_defaults(handler="builder.fleet.retire:command")


def check_name(name: str) -> str:
    if len(name) > 253 or not NODE_NAME.match(name):
        raise UserError(
            f"node retire: {inert(name)!r} is not a node name (lowercase letters, digits, '-' "
            "and '.', at most 253 characters, as Kubernetes names nodes)"
        )
    return name


class Cluster:
    """The calls a retire makes, each under the one deadline; failures become one line."""

    def __init__(self, kubeconfig: Path, deadline: Any) -> None:
        from kubernetes import client

        from builder.fleet import kubeconfig as kubeconfigs

        api_client, self.host = kubeconfigs.api_client(kubeconfig)
        self.api = client.CoreV1Api(api_client)
        self.kubeconfig = kubeconfig
        self.deadline = deadline

    def call(self, what: str, method: str, *args: Any, busy: bool = False, **kwargs: Any) -> Any:
        """The JSON answer of `method`, None for 404, a `Busy` for 429 when `busy`; other
        failures one line (exit 1)."""
        from kubernetes.client import ApiException
        from urllib3.exceptions import HTTPError

        timeout = self.deadline.timeout(15)
        try:
            answer = getattr(self.api, method)(
                *args, _preload_content=False, _request_timeout=(timeout, timeout), **kwargs
            )
            found = json.loads(answer.data or b"{}")
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 429 and busy:
                return Busy(_refusal(exc))
            raise BuildError(f"{self.kubeconfig}: {what}: {_refusal(exc)}") from None
        except (HTTPError, OSError) as exc:
            from builder.fleet.kubeconfig import short

            raise BuildError(f"{self.kubeconfig}: cannot reach the cluster at {self.host}: "
                             f"{short(exc)}") from None  # fmt: skip
        except ValueError:
            raise BuildError(f"{self.kubeconfig}: {what}: {self.host} answered no JSON") from None
        if not isinstance(found, dict):
            raise BuildError(f"{self.kubeconfig}: {what}: {self.host} answered no JSON object")
        return found

    def refuse(self, what: str, why: str) -> BuildError:
        return BuildError(f"{self.kubeconfig}: {what}: {self.host} answered {why}")


class Busy:
    """A 429: the eviction would break a PodDisruptionBudget now; try again later."""

    def __init__(self, message: str) -> None:
        self.message = message


def _refusal(exc: Any) -> str:
    """What the apiserver's Status says, in one inert line."""
    try:
        message = str(json.loads(exc.body)["message"])
    except (ValueError, KeyError, TypeError):
        message = str(exc.reason)
    text = " ".join(message.split())[:200]
    return inert(f"the cluster answered {exc.status} {text}")


def _drainable(pod: dict[str, Any]) -> str:
    """Why a pod stays ("" when it is evicted), as kubectl's drain filters decide."""
    meta = pod.get("metadata") or {}
    annotations, owners = meta.get("annotations"), meta.get("ownerReferences")
    if isinstance(annotations, dict) and MIRROR in annotations:
        return "mirror"
    for owner in owners if isinstance(owners, list) else []:
        if isinstance(owner, dict) and owner.get("controller") and owner.get("kind") == "DaemonSet":
            return "DaemonSet"
    return ""


def _pods(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    """The pods on `name`, each with a string namespace and name; one line otherwise."""
    what = f"list the pods on {name}"
    listed = cluster.call(
        what, "list_pod_for_all_namespaces", field_selector=f"spec.nodeName={name}"
    )
    pods = (listed or {}).get("items") or []
    if not isinstance(pods, list):
        raise cluster.refuse(what, "no list of pods")
    for pod in pods:
        meta = pod.get("metadata") if isinstance(pod, dict) else None
        if not isinstance(meta, dict) or not all(
            isinstance(meta.get(k), str) for k in ("namespace", "name")
        ):
            raise cluster.refuse(what, "a pod without a namespace and name")
    return pods


def drain(cluster: Cluster, name: str) -> None:
    pods = _pods(cluster, name)
    left = {"DaemonSet": 0, "mirror": 0}
    evicted = []
    for pod in pods:
        why = _drainable(pod)
        if why:
            left[why] += 1
            continue
        meta = pod["metadata"]
        print(f"evicting pod {inert(meta['namespace'])}/{inert(meta['name'])}")
        _evict(cluster, meta["namespace"], meta["name"])
        evicted.append(meta)
    for meta in evicted:
        _wait_gone(cluster, meta["namespace"], meta["name"], meta.get("uid"))
    print(
        f"drained {name}: {len(evicted)} pod(s) evicted; left {left['DaemonSet']} DaemonSet "
        f"and {left['mirror']} mirror pod(s), which go with the node"
    )


def _evict(cluster: Cluster, namespace: str, pod: str) -> None:
    from kubernetes.client import V1Eviction, V1ObjectMeta

    body = V1Eviction(
        api_version="policy/v1", kind="Eviction",
        metadata=V1ObjectMeta(name=pod, namespace=namespace),
    )  # fmt: skip
    what = f"evict pod {inert(namespace)}/{inert(pod)}"
    while True:
        answer = cluster.call(what, "create_namespaced_pod_eviction", pod, namespace, body,
                              busy=True)  # fmt: skip
        if not isinstance(answer, Busy):
            return
        print(f"{what}: {answer.message}; again in {RETRY:g} s")
        cluster.deadline.sleep(RETRY)


def _wait_gone(cluster: Cluster, namespace: str, pod: str, uid: str | None) -> None:
    what = f"read pod {inert(namespace)}/{inert(pod)}"
    while True:
        found = cluster.call(what, "read_namespaced_pod", pod, namespace)
        if found is None or (found.get("metadata") or {}).get("uid") != uid:
            return
        cluster.deadline.sleep(POLL)


def retire(cluster: Cluster, name: str) -> None:
    """Cordon, drain, delete the Node and its node-password Secret, each step one line."""
    cluster.call(f"cordon {name}", "patch_node", name, {"spec": {"unschedulable": True}},
                 _content_type=STRATEGIC)  # fmt: skip
    print(f"cordoned {name}: no new pods are scheduled on it")
    drain(cluster, name)
    cluster.call(f"delete Node {name}", "delete_node", name)
    while cluster.call(f"read Node {name}", "read_node", name) is not None:
        cluster.deadline.sleep(POLL)  # a finalizer: K3s is removing the etcd member
    print(f"deleted Node {name}: K3s removes its etcd member with it")
    secret = f"{name}.node-password.k3s"
    gone = cluster.call(f"delete Secret kube-system/{secret}", "delete_namespaced_secret",
                        secret, "kube-system")  # fmt: skip
    state = "deleted" if gone is not None else "no"
    print(f"{state} Secret kube-system/{secret}: a new node password for {name} is accepted")


def confirm(name: str, host: str) -> bool:
    if not sys.stdin.isatty():
        raise UserError(f"node retire {name}: not on a terminal: give --yes to retire it unasked")
    answer = input(
        f"Retire {name} from the cluster at {host}: cordon it, evict its pods, delete the Node "
        "and its node password? [y/N] "
    )
    return answer.strip().lower() in ("y", "yes")


def command(args: argparse.Namespace) -> int:
    from builder.util.deadline import Deadline

    name = check_name(args.name)
    if not 0 < args.timeout < float("inf"):
        raise UserError(f"node retire: --timeout {args.timeout:g}: must be seconds above 0")
    kubeconfig = Path(args.kubeconfig).expanduser()
    what = f"node retire {name}"
    with Deadline(args.timeout, what, "--timeout") as deadline:
        cluster = Cluster(kubeconfig, deadline)
        if cluster.call(f"read Node {name}", "read_node", name) is None:
            raise BuildError(f"{what}: no node {name} in the cluster at {cluster.host}: not found")
    if not args.yes and not confirm(name, cluster.host):
        print("nothing changed")
        return 1
    started = time.monotonic()
    with Deadline(args.timeout, what, "--timeout") as cluster.deadline:
        print(f"retiring {name} from the cluster at {cluster.host}")
        retire(cluster, name)
    print(f"{name} is retired ({time.monotonic() - started:.1f} s): re-flash its card; "
          "it joins again under the same name")  # fmt: skip
    return 0
