"""Node labels the kubelet refuses to set on its own Node, checked at build time.

The kubelet validates `--node-labels` (K3s passes every `node-label` of config.yaml there)
before it starts, and exits at once on a refused label; K3s exits with it, so every device of
the fleet would crash-loop until `agent.start_timeout` (k3s-io/k3s#1289, with
`node-role.kubernetes.io/worker`). The rules, as kubernetes v1.31-v1.34 has them:

| rule | kubernetes file:function |
|---|---|
| a key's namespace is the part before its one `/`; a key without one has none | staging/src/k8s.io/kubelet/pkg/apis/well_known_labels.go:getLabelNamespace |
| a label is reserved when its namespace is `kubernetes.io` or `k8s.io`, or a subdomain of either | cmd/kubelet/app/options/options.go:isKubernetesLabel |
| a reserved label is allowed when its namespace is `kubelet.kubernetes.io` or `node.kubernetes.io`, or a subdomain of either | well_known_labels.go:kubeletLabelNamespaces, IsKubeletLabel |
| a reserved label is allowed when it is one of the fixed set `KUBELET_LABELS` (hostname, topology zone and region, their failure-domain beta forms, instance type, os, arch and the beta os/arch) | well_known_labels.go:kubeletLabels; staging/src/k8s.io/api/core/v1/well_known_labels.go |
| any other reserved label: `failed to validate kubelet flags` and the kubelet exits | options.go:ValidateKubeletFlags; cmd/kubelet/app/server.go |
"""

from __future__ import annotations

RESERVED_DOMAINS = ("kubernetes.io", "k8s.io")
KUBELET_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")
KUBELET_LABELS = frozenset(
    {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
    }
)


def _within(namespace: str, domain: str) -> bool:
    return namespace == domain or namespace.endswith("." + domain)


def refused(key: str) -> bool:
    """True when the kubelet refuses to set label `key` on its own Node."""
    namespace = key.split("/", 1)[0] if "/" in key else ""
    if not any(_within(namespace, d) for d in RESERVED_DOMAINS):
        return False
    if key in KUBELET_LABELS:
        return False
    return not any(_within(namespace, n) for n in KUBELET_NAMESPACES)


def alternative(key: str, value: str) -> str:
    """What to use instead of the refused label `key=value`."""
    name = key.split("/", 1)[1]
    if key.split("/", 1)[0] == "node-role.kubernetes.io":
        # node-role.kubernetes.io/worker= is the usual one: the role is the name.
        suggested = f"node.kubernetes.io/role={name}"
    else:
        suggested = f"node.kubernetes.io/{name}={value}"
    return (
        f"use {suggested} or a label in your own domain such as example.com/{name}; "
        "reserved labels can be set after the join with kubectl label"
    )


def problem(item: str) -> str | None:
    """Why the kubelet refuses the label `key=value` (None: it sets it)."""
    key, _, value = item.partition("=")
    if not refused(key):
        return None
    return (
        f"{key} is in the kubelet's reserved kubernetes.io/k8s.io namespace, so every node's "
        f"kubelet would exit at start; {alternative(key, value)}"
    )
