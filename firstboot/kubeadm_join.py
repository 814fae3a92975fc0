"""The JoinConfiguration a kubeadm worker's agent hands `kubeadm join --config`.

| rule | source |
|---|---|
| `apiVersion: kubeadm.k8s.io/v1beta4`, `kind: JoinConfiguration` | kubernetes cmd/kubeadm/app/apis/kubeadm/v1beta4/types.go |
| `nodeRegistration.name` is the Node's name, and the CN of the kubelet's client certificate | types.go NodeRegistrationOptions.Name |
| `nodeRegistration.taints` is always written: left out (nil) it means kubeadm's default, `[]` means none | types.go NodeRegistrationOptions.Taints |
| a taint is `{key, value, effect}`, effect `NoSchedule`, `PreferNoSchedule` or `NoExecute`; written `key[=value]:effect` as K3s and kubectl take it | k8s.io/api core/v1 Taint, TaintEffect |
| `nodeRegistration.kubeletExtraArgs` is a list of `{name, value}` (a map before v1beta4), the name without its dashes; duplicates are allowed | types.go Arg, NodeRegistrationOptions.KubeletExtraArgs |
| node labels are not a JoinConfiguration field: they are the kubelet's `node-labels` argument, comma-separated, so each must be a label (`[prefix/]name=value`, no comma: one label cannot add another); the kubelet's reserved-label rule is checked at build time (builder/config/kubelabels.py) | types.go; cmd/kubelet/app/options/options.go; apimachinery validation IsQualifiedName, IsValidLabelValue |
| `criSocket` is containerd's `unix:///run/containerd/containerd.sock` | cmd/kubeadm/app/constants (the CRI socket kubeadm finds for containerd) |
| `discovery.bootstrapToken`: `token`, `apiServerEndpoint` (host:port), `caCertHashes` (`sha256:<hex>`); `unsafeSkipCAVerification: true` only when there is no pin; `tlsBootstrapToken` defaults to the token | types.go Discovery, BootstrapTokenDiscovery |
| the file is YAML; it is written as JSON, which YAML reads as it is, so no value can break out of its quotes | sigs.k8s.io/yaml (JSON is YAML) |

The file carries the bootstrap token: the agent writes it 0600 from its first byte and removes
it once the node joined, as it removes the token itself.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List

API_VERSION = "kubeadm.k8s.io/v1beta4"
CRI_SOCKET = "unix:///run/containerd/containerd.sock"
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_ARG_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*\Z")
# a label as the kubelet's --node-labels takes it: [prefix/]name=value, no comma (the separator)
_LABEL = re.compile(
    r"^(?:[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
    r"=(?:[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?\Z"
)


class JoinConfigurationError(ValueError):
    """A value the JoinConfiguration cannot carry; the message never holds the token."""


def taint(text: str) -> Dict[str, str]:
    """`key[=value]:effect` as a Taint object."""
    head, sep, effect = text.rpartition(":")
    if not sep or effect not in EFFECTS:
        raise JoinConfigurationError(
            "taint " + repr(text) + ": must be key[=value]:effect, effect one of "
            + ", ".join(EFFECTS)
        )  # fmt: skip
    key, _, value = head.partition("=")
    if not key:
        raise JoinConfigurationError("taint " + repr(text) + ": the key is empty")
    found = {"key": key, "effect": effect}
    if value:
        found["value"] = value
    return found


def kubelet_extra_args(labels: List[str], kubelet_args: List[str]) -> List[Dict[str, str]]:
    """The kubelet's extra arguments as v1beta4 Args: `node-labels` first (comma-joined, as
    the kubelet flag takes them), then each `name=value` (a leading `--` dropped)."""
    for label in labels:
        if not _LABEL.match(label):
            raise JoinConfigurationError("node label " + repr(label) + ": not a Kubernetes label")
    args = [{"name": "node-labels", "value": ",".join(labels)}] if labels else []
    for item in kubelet_args:
        name, sep, value = item.lstrip("-").partition("=")
        if not _ARG_NAME.match(name):
            raise JoinConfigurationError("kubelet argument " + repr(item) + ": not a flag name")
        args.append({"name": name, "value": value if sep else "true"})
    return args


def join_configuration(
    node_name: str,
    endpoint: str,
    token: str,
    ca_cert_hashes: List[str],
    labels: List[str],
    taints: List[str],
    kubelet_args: List[str],
) -> bytes:
    """The JoinConfiguration, as JSON. No pin means `unsafeSkipCAVerification` (the fleet
    said `allow_unpinned`; the agent's own discovery already ran under the same rule)."""
    bootstrap: Dict[str, Any] = {"token": token, "apiServerEndpoint": endpoint}
    if ca_cert_hashes:
        bootstrap["caCertHashes"] = list(ca_cert_hashes)
    else:
        bootstrap["unsafeSkipCAVerification"] = True
    config = {
        "apiVersion": API_VERSION,
        "kind": "JoinConfiguration",
        "nodeRegistration": {
            "name": node_name,
            "criSocket": CRI_SOCKET,
            "taints": [taint(t) for t in taints],
            "kubeletExtraArgs": kubelet_extra_args(labels, kubelet_args),
        },
        "discovery": {"bootstrapToken": bootstrap},
    }
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
