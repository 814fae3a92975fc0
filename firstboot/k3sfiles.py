"""The files that make K3s join: config.yaml, the token file, the systemd unit and its env file.

The unit matches what the official K3s installer writes (Type=notify,
KillMode=process, Delegate=yes, Restart=always, TimeoutStartSec=0, modprobe
pre-steps, an env file with mode 0600). config.yaml uses YAML block style with
double-quoted scalars (`quoted`), so no value can break its structure.

| rule | source |
|---|---|
| K3s reads config.yaml with go-yaml v2; a later duplicate key wins (a `key+` appends) | k3s pkg/configfilearg/parser.go:readConfigFile |
| a key with no value (`kube-proxy-arg:`, an empty list) becomes `--kube-proxy-arg=`, one empty value, so an empty list is left out | k3s pkg/configfilearg/parser.go:readConfigFile (convert.ToString(nil) is "") |
| go-yaml refuses a `\\u` escape of a surrogate ("found invalid Unicode character escape code"), which is how JSON writes a character above U+FFFF, and a raw DEL or C1 control; so every character outside printable ASCII is written as `\\uXXXX` or `\\UXXXXXXXX` | go-yaml v2 scannerc.go (yaml_parser_scan_flow_scalar), readerc.go |
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

CONFIG_PATH = "/etc/rancher/k3s/config.yaml"
TOKEN_PATH = "/etc/rancher/k3s/join-token"
NODE_PASSWORD_PATH = "/etc/rancher/node/password"
AGENT_TOKEN_PATH = "/etc/rancher/k3s/agent-token"  # a server's --agent-token-file (builder-made)


def unit_name(role: str) -> str:
    return "k3s-agent.service" if role == "agent" else "k3s.service"


def unit_path(role: str) -> str:
    return "/etc/systemd/system/" + unit_name(role)


def env_path(role: str) -> str:
    return unit_path(role) + ".env"


def quoted(value: Any) -> str:
    """A JSON scalar as a YAML double-quoted one that go-yaml v2 reads back unchanged."""
    text = json.dumps(value, ensure_ascii=False)  # escapes only ", \\ and C0 controls
    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")  # pairs joined
    return "".join(
        c if " " <= c <= "~" else ("\\u%04x" % ord(c) if ord(c) <= 0xFFFF else "\\U%08x" % ord(c))
        for c in text
    )


def config_yaml(
    server: Optional[str],
    node_name: str,
    labels: List[str],
    taints: List[str],
    kubelet_args: List[str],
    tls_san: Optional[List[str]] = None,
    agent_token_file: Optional[str] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> bytes:
    """`server: None` is the server that initialises the cluster (`cluster-init: true`).
    `extra`: more K3s flags (cluster.k3s_config & co.), after pifleet's own, never over one."""
    lines = ["# Written by pifleet-firstboot; K3s reads it at every start."]
    lines.append("cluster-init: true" if server is None else "server: " + quoted(server))
    lines += [
        "token-file: " + quoted(TOKEN_PATH),
        "node-name: " + quoted(node_name),
    ]
    if agent_token_file:
        lines.append("agent-token-file: " + quoted(agent_token_file))
    for key, values in (
        ("tls-san", tls_san or []),
        ("node-label", labels),
        ("node-taint", taints),
        ("kubelet-arg", kubelet_args),
    ):
        if values:
            lines.append(key + ":")
            lines.extend("  - " + quoted(v) for v in values)
    written = {line.split(":", 1)[0] for line in lines if not line.startswith((" ", "#"))}
    for key, value in sorted((extra or {}).items()):
        if key in written or value == []:  # K3s reads an empty `key:` as one "" value
            continue
        if isinstance(value, list):
            lines.append(key + ":")
            lines.extend("  - " + quoted(v) for v in value)
        else:
            lines.append(key + ": " + quoted(value))
    return ("\n".join(lines) + "\n").encode()


def unit_file(role: str, k3s_binary: str) -> bytes:
    command = "agent" if role == "agent" else "server"
    return (
        "[Unit]\n"
        "Description=Lightweight Kubernetes\n"
        "Documentation=https://k3s.io\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
        "\n"
        "[Service]\n"
        "Type=notify\n"
        "EnvironmentFile=-/etc/default/%N\n"
        "EnvironmentFile=-/etc/sysconfig/%N\n"
        "EnvironmentFile=-" + env_path(role) + "\n"
        "KillMode=process\n"
        "Delegate=yes\n"
        "User=root\n"
        "LimitNOFILE=1048576\n"
        "LimitNPROC=infinity\n"
        "LimitCORE=infinity\n"
        "TasksMax=infinity\n"
        "TimeoutStartSec=0\n"
        "Restart=always\n"
        "RestartSec=5s\n"
        "ExecStartPre=-/sbin/modprobe br_netfilter\n"
        "ExecStartPre=-/sbin/modprobe overlay\n"
        "ExecStart=" + k3s_binary + " \\\n"
        "    " + command + " \\\n"
    ).encode()


def env_file(proxy: Optional[Dict[str, str]] = None) -> bytes:
    """install.sh's env file: the proxy variables (HTTP_PROXY, HTTPS_PROXY, NO_PROXY,
    CONTAINERD_*) as `NAME='value'` lines, the form dash's `export` prints. The token is in
    TOKEN_PATH (named by config.yaml), never in the environment."""
    lines = ["# K3s environment (pifleet-firstboot), mode 0600 like install.sh's."]
    lines += [name + "='" + value + "'" for name, value in sorted((proxy or {}).items())]
    return ("\n".join(lines) + "\n").encode()


def merge_labels(fleet: List[str], device: List[str]) -> List[str]:
    """Fleet labels plus device labels; for the same key the device wins."""
    merged: Dict[str, str] = {}
    for item in list(fleet) + list(device):
        merged[item.split("=", 1)[0]] = item
    return list(merged.values())
