"""K3s's own flag lists, by role: what `cluster.k3s_config` may put into config.yaml.

K3s reads config.yaml as its flags (a key is a flag's long name without `--`) and skips a
key it does not know with only a warning in its log, so a typo silently does nothing; pifleet
refuses it at build time instead. The names and kinds are those of K3s v1.32-v1.34:

| rule | k3s-io/k3s file |
|---|---|
| `k3s agent` flags: `AGENT_AND_SERVER` and `AGENT_ONLY` | pkg/cli/cmds/agent.go:NewAgentCommand (and docs/cli/agent.md's `k3s agent --help`) |
| `k3s server` flags: `AGENT_AND_SERVER` and `SERVER_ONLY` (a server runs an agent too) | pkg/cli/cmds/server.go:ServerFlags (and docs/cli/server.md's `k3s server --help`) |
| config, debug, v, vmodule, log, alsologtostderr: both roles | pkg/cli/cmds/config.go, log.go, root.go |
| kind: BoolFlag/BoolTFlag -> bool, IntFlag -> int, StringSliceFlag -> list, StringFlag/DurationFlag -> string | the flag's type in agent.go/server.go |
| an unknown config.yaml key is skipped with a warning | pkg/configfilearg/parser.go |

`OWNED` are the flags pifleet writes itself (firstboot/k3sfiles.py), each with the key to use
instead; `SECRET` are flags whose value is a credential, which would land in join.json (0644)
and the image's manifest.
"""

from __future__ import annotations

import difflib
from typing import Literal

Kind = Literal["bool", "int", "string", "list"]

_COMMON: dict[str, Kind] = {
    "config": "string",
    "debug": "bool",
    "v": "int",
    "vmodule": "string",
    "log": "string",
    "alsologtostderr": "bool",
    "token": "string",
    "token-file": "string",
    "server": "string",
    "data-dir": "string",
    "bind-address": "string",
    "node-name": "string",
    "with-node-id": "bool",
    "node-label": "list",
    "node-taint": "list",
    "image-credential-provider-bin-dir": "string",
    "image-credential-provider-config": "string",
    "selinux": "bool",
    "lb-server-port": "int",
    "protect-kernel-defaults": "bool",
    "container-runtime-endpoint": "string",
    "default-runtime": "string",
    "image-service-endpoint": "string",
    "pause-image": "string",
    "snapshotter": "string",
    "private-registry": "string",
    "disable-default-registry-endpoint": "bool",
    "nonroot-devices": "bool",
    "airgap-extra-registry": "list",
    "node-ip": "list",
    "node-external-ip": "list",
    "node-internal-dns": "list",
    "node-external-dns": "list",
    "resolv-conf": "string",
    "flannel-iface": "string",
    "flannel-conf": "string",
    "flannel-cni-conf": "string",
    "kubelet-arg": "list",
    "kube-proxy-arg": "list",
    "enable-pprof": "bool",
    "rootless": "bool",
    "prefer-bundled-bin": "bool",
    "docker": "bool",
    "vpn-auth": "string",
    "vpn-auth-file": "string",
}
AGENT_AND_SERVER = _COMMON
AGENT_ONLY: dict[str, Kind] = {"disable-apiserver-lb": "bool"}
_BOOLS = (
    "tls-san-security flannel-ipv6-masq flannel-external-ip cluster-init cluster-reset kine-tls"
    " etcd-expose-metrics etcd-disable-snapshots etcd-snapshot-compress etcd-s3"
    " etcd-s3-skip-ssl-verify etcd-s3-insecure disable-scheduler disable-cloud-controller"
    " disable-kube-proxy disable-network-policy disable-helm-controller disable-apiserver"
    " disable-controller-manager disable-etcd embedded-registry supervisor-metrics"
    " secrets-encryption disable-agent"
)
_LISTS = (
    "tls-san cluster-cidr service-cidr cluster-dns kube-apiserver-arg etcd-arg"
    " kube-controller-manager-arg kube-scheduler-arg kube-cloud-controller-manager-arg disable"
    " kube-controller-arg kube-cloud-controller-arg"
)
_STRINGS = (
    "advertise-address service-node-port-range cluster-domain flannel-backend"
    " egress-selector-mode servicelb-namespace write-kubeconfig write-kubeconfig-mode"
    " write-kubeconfig-group helm-job-image agent-token agent-token-file"
    " cluster-reset-restore-path datastore-endpoint datastore-cafile datastore-certfile"
    " datastore-keyfile etcd-snapshot-name etcd-snapshot-schedule-cron etcd-snapshot-dir"
    " etcd-s3-endpoint etcd-s3-endpoint-ca etcd-s3-access-key etcd-s3-secret-key etcd-s3-session-token etcd-s3-bucket"
    " etcd-s3-region etcd-s3-folder etcd-s3-proxy etcd-s3-config-secret etcd-s3-timeout"
    " default-local-storage-path system-default-registry"
)
SERVER_ONLY: dict[str, Kind] = {
    **dict.fromkeys(_BOOLS.split(), "bool"),
    **dict.fromkeys(_LISTS.split(), "list"),
    **dict.fromkeys(_STRINGS.split(), "string"),
    "https-listen-port": "int",
    "advertise-port": "int",
    "etcd-snapshot-retention": "int",
}
AGENT: dict[str, Kind] = {**AGENT_AND_SERVER, **AGENT_ONLY}
SERVER: dict[str, Kind] = {**AGENT_AND_SERVER, **SERVER_ONLY}
ROLES: dict[str, dict[str, Kind]] = {"agent": AGENT, "server": SERVER}

_NAME = "devices[].hostname (or hostname_pattern): the node name is the host name"
OWNED: dict[str, str] = {
    "server": "cluster.server",
    "token": "cluster.token_file or cluster.token_env",
    "token-file": "cluster.token_file or cluster.token_env",
    "agent-token": "cluster.agent_token (with cluster.create)",
    "agent-token-file": "cluster.agent_token (with cluster.create)",
    "cluster-init": "cluster.create and cluster.initialized",
    "node-name": _NAME,
    "with-node-id": _NAME,
    "node-label": "cluster.node_labels or devices[].labels",
    "node-taint": "cluster.node_taints or devices[].taints",
    "kubelet-arg": "cluster.kubelet_args",
    "node-ip": "node_ip (cluster.node_ip or devices[].node_ip)",
    "node-external-ip": "node_external_ip (cluster.node_external_ip or devices[].node_external_ip)",
    "flannel-iface": "flannel_iface (cluster.flannel_iface or devices[].flannel_iface)",
    "advertise-address": "advertise_address (cluster.advertise_address or devices[].advertise_address)",
    "config": "nothing: pifleet writes /etc/rancher/k3s/config.yaml itself",
    "data-dir": "nothing: pifleet lays out /var/lib/rancher/k3s (air-gap images, the cluster CA, the etcd member check)",
    "system-default-registry": "cluster.system_default_registry",
    "embedded-registry": "cluster.embedded_registry",
    "private-registry": "cluster.registries (pifleet writes /etc/rancher/k3s/registries.yaml, 0600)",
    "cluster-reset": "nothing in the image: it is a one-time repair (`k3s server --cluster-reset` on the device), and in config.yaml it would reset the member at every start",
}
# With cluster.create pifleet writes tls-san (cluster.server's host and every server).
CREATE_OWNED = {"tls-san": "cluster.server and cluster.servers (pifleet writes their names)"}
SECRET: dict[str, str] = {
    "vpn-auth": "vpn-auth-file",
    "etcd-s3-access-key": "etcd-s3-config-secret",
    "etcd-s3-secret-key": "etcd-s3-config-secret",
    "etcd-s3-session-token": "etcd-s3-config-secret",
}


def nearest(name: str, role: str | None = None) -> str | None:
    """The real flag closest to `name` (of `role`, or of either), if any is close."""
    names = list(ROLES[role]) if role else list(AGENT.keys() | SERVER.keys())
    found = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.6)
    return found[0] if found else None
