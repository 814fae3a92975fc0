"""The contract between the builder (host) and the agent (device).

The builder writes two kinds of files; this module is the only definition of
their shape, and both halves import it (the builder writes with `dump_*`, the
agent reads with `load_*`).

Fleet-wide, in the root filesystem (golden image):
  /etc/pifleet/join.json     JoinConfig, mode 0644, no secrets
  /etc/pifleet/token         the join token, mode 0600 root (unless injected at flash time)

Per device, in the boot (FAT) partition, under <boot_dir>/pifleet/:
  device.json                DeviceConfig, no secrets; in a cluster pifleet creates it also says
                             the device's role, whether it initialises the cluster
                             (`cluster_init`, the seed's init/join flag) and its tls-san names
  token                      optional: a token injected at flash/personalize time
  node-password              optional: pre-seeded K3s node password
The agent removes `token` and `node-password` from the boot partition once the
device has joined.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

JOIN_CONFIG_PATH = "/etc/pifleet/join.json"
FLEET_TOKEN_PATH = "/etc/pifleet/token"
BOOT_SUBDIR = "pifleet"
DEVICE_FILE = "device.json"
BOOT_TOKEN_FILE = "token"
BOOT_NODE_PASSWORD_FILE = "node-password"
SCHEMA_VERSION = 1

_HOSTNAME = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


class JoinConfigError(ValueError):
    """A join or device file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class JoinConfig:
    server: str
    role: str = "agent"
    token_file: str = FLEET_TOKEN_PATH
    boot_dir: str = "/boot/firmware"
    hostname_pattern: str = "pi-{serial}"
    node_labels: List[str] = field(default_factory=list)
    node_taints: List[str] = field(default_factory=list)
    kubelet_args: List[str] = field(default_factory=list)
    k3s_binary: str = "/usr/local/bin/k3s"
    build_time: int = 0
    backoff_cap: float = 60.0
    clock_sync_timeout: float = 120.0
    recheck_interval: float = 600.0  # after a final verdict; 0: exit 2 instead (tests)
    start_timeout: float = 900.0  # K3s not joined by then: report failed state=start
    proxy: Dict[str, str] = field(default_factory=dict)  # HTTP_PROXY & co. for K3s's env file
    # more K3s flags for config.yaml, by role ("agent", "server"): the builder checked them
    k3s_config: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    version: int = SCHEMA_VERSION
    # kind "kubeadm": a kubeadm worker (firstboot/kubeadm_states.py); these keys only then
    kind: str = "k3s"
    ca_cert_hashes: List[str] = field(default_factory=list)  # "sha256:<hex>" over the CA's SPKI
    allow_unpinned: bool = False  # kubeadm's unsafeSkipCAVerification, the operator's choice
    kubeadm_binary: str = "/usr/bin/kubeadm"


KUBEADM_KEYS = ("kind", "ca_cert_hashes", "allow_unpinned", "kubeadm_binary")
_PIN = re.compile(r"^sha256:[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class DeviceConfig:
    hostname: Optional[str] = None
    node_labels: List[str] = field(default_factory=list)
    node_taints: List[str] = field(default_factory=list)
    server: Optional[str] = None
    role: Optional[str] = None  # overrides the fleet's role (a cluster pifleet creates)
    cluster_init: Optional[bool] = None  # a server: True initialises, False joins `server`
    tls_san: List[str] = field(default_factory=list)  # a server: extra certificate names
    k3s_config: Dict[str, Any] = field(default_factory=dict)  # wins over the fleet's
    ca_cert_hashes: List[str] = field(default_factory=list)  # kubeadm: wins over the fleet's


def dump_join_config(config: JoinConfig) -> bytes:
    facts = asdict(config)
    if config.kind == "k3s":  # a K3s fleet's join.json stays as it was
        facts = {k: v for k, v in facts.items() if k not in KUBEADM_KEYS}
    return _dump(facts)


def dump_device_config(config: DeviceConfig) -> bytes:
    return _dump({k: v for k, v in asdict(config).items() if v not in (None, [], {})})


def load_join_config(data: bytes, where: str = JOIN_CONFIG_PATH) -> JoinConfig:
    raw = _load(data, where)
    _check_keys(raw, JoinConfig, where)
    if raw.get("version") != SCHEMA_VERSION:
        raise JoinConfigError(
            f"{where}: version: expected {SCHEMA_VERSION}, got {raw.get('version')!r}"
        )
    if not isinstance(raw.get("server"), str) or not raw["server"].startswith("https://"):
        raise JoinConfigError(f"{where}: server: must be an https:// URL")
    if raw.get("role", "agent") not in ("agent", "server"):
        raise JoinConfigError(f"{where}: role: must be 'agent' or 'server'")
    for key in ("node_labels", "node_taints", "kubelet_args"):
        _check_str_list(raw, key, where)
    check_proxy(raw.get("proxy", {}), where)
    by_role = raw.get("k3s_config", {})
    if not isinstance(by_role, dict) or not set(by_role) <= {"agent", "server"}:
        raise JoinConfigError(f"{where}: k3s_config: must map 'agent' and 'server' to flags")
    for role, flags in by_role.items():
        check_k3s_flags(flags, f"{where}: k3s_config.{role}")
    _check_kubeadm(raw, where)
    return JoinConfig(**raw)


def _check_kubeadm(raw: Dict[str, Any], where: str) -> None:
    kind = raw.get("kind", "k3s")
    if kind not in ("k3s", "kubeadm"):
        raise JoinConfigError(f"{where}: kind: must be 'k3s' or 'kubeadm'")
    _check_pins(raw, where)
    if not isinstance(raw.get("allow_unpinned", False), bool):
        raise JoinConfigError(f"{where}: allow_unpinned: must be true or false")
    binary = raw.get("kubeadm_binary", "/usr/bin/kubeadm")
    if not isinstance(binary, str) or not binary.startswith("/"):
        raise JoinConfigError(f"{where}: kubeadm_binary: must be an absolute path")
    if kind == "kubeadm" and not raw.get("ca_cert_hashes") and not raw.get("allow_unpinned"):
        raise JoinConfigError(f"{where}: ca_cert_hashes: a kubeadm join needs a CA pin")


def load_device_config(data: bytes, where: str) -> DeviceConfig:
    raw = _load(data, where)
    _check_keys(raw, DeviceConfig, where)
    name = raw.get("hostname")
    if name is not None and (not isinstance(name, str) or not valid_hostname(name)):
        raise JoinConfigError(f"{where}: hostname: not a valid RFC 1123 host name: {name!r}")
    for key in ("node_labels", "node_taints", "tls_san"):
        _check_str_list(raw, key, where)
    if raw.get("role") not in (None, "agent", "server"):
        raise JoinConfigError(f"{where}: role: must be 'agent' or 'server'")
    if raw.get("cluster_init") not in (None, True, False):
        raise JoinConfigError(f"{where}: cluster_init: must be true or false")
    if raw.get("cluster_init") is not None and raw.get("role") != "server":
        raise JoinConfigError(f"{where}: cluster_init: only for role 'server'")
    server = raw.get("server")
    if server is not None and (not isinstance(server, str) or not server.startswith("https://")):
        raise JoinConfigError(f"{where}: server: must be an https:// URL")
    check_k3s_flags(raw.get("k3s_config", {}), f"{where}: k3s_config")
    _check_pins(raw, where)
    return DeviceConfig(**raw)


def _check_pins(raw: Dict[str, Any], where: str) -> None:
    _check_str_list(raw, "ca_cert_hashes", where)
    for pin in raw.get("ca_cert_hashes", []):
        if not _PIN.match(pin):
            raise JoinConfigError(f"{where}: ca_cert_hashes: {pin!r} is not sha256:<64 hex>")


def valid_hostname(name: str) -> bool:
    """RFC 1123 label, lowercase: what K3s accepts as a node name here."""
    return bool(_HOSTNAME.match(name))


def _dump(obj: Dict[str, Any]) -> bytes:
    # Sorted keys and a trailing newline: the same input always gives the same bytes.
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _load(data: bytes, where: str) -> Dict[str, Any]:
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise JoinConfigError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise JoinConfigError(f"{where}: expected a JSON object")
    return raw


def _check_keys(raw: Dict[str, Any], cls: type, where: str) -> None:
    known = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    unknown = sorted(set(raw) - known)
    if unknown:
        raise JoinConfigError(f"{where}: unknown key {unknown[0]!r}")


_FLAG = re.compile(r"^[a-z0-9][a-z0-9-]*\Z")  # \Z: $ also matches before a final newline


def check_k3s_flags(value: Any, where: str) -> None:
    """K3s flags for config.yaml: names as K3s spells them; true/false, an integer, a string
    or a list of strings."""
    if not isinstance(value, dict):
        raise JoinConfigError(f"{where}: must be a mapping of K3s flags to values")
    for name, item in value.items():
        if not isinstance(name, str) or not _FLAG.match(name):
            raise JoinConfigError(f"{where}: {name!r} is not a K3s flag name")
        if isinstance(item, list):
            ok = all(isinstance(v, str) for v in item)
        else:
            ok = isinstance(item, (bool, int, str))
        if not ok:
            raise JoinConfigError(f"{where}.{name}: must be true/false, a number, text or a list")


PROXY_NAME = re.compile(r"^(?i:(HTTP|HTTPS|NO)_PROXY)\Z|^CONTAINERD_[A-Z0-9_]+\Z")


def check_proxy(value: Any, where: str) -> None:
    """Names install.sh copies into K3s's env file; values on one line."""
    if not isinstance(value, dict):
        raise JoinConfigError(f"{where}: proxy: must be a mapping of variable names to values")
    for key, item in value.items():
        if not PROXY_NAME.match(str(key)):
            raise JoinConfigError(
                f"{where}: proxy: {key!r} is not HTTP_PROXY, HTTPS_PROXY, NO_PROXY or CONTAINERD_*"
            )
        if not isinstance(item, str) or any(c in item for c in "\n\0'"):
            raise JoinConfigError(f"{where}: proxy.{key}: must be one line without quotes (')")


def _check_str_list(raw: Dict[str, Any], key: str, where: str) -> None:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise JoinConfigError(f"{where}: {key}: must be a list of strings")
