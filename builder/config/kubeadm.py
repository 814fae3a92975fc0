"""`cluster.kind: kubeadm`: the fleet keys of an upstream Kubernetes (kubeadm) worker fleet.

| rule | source |
|---|---|
| the token is `<id>.<secret>`: six, then sixteen, of `[a-z0-9]`, and nothing else | kubernetes/cluster-bootstrap token/api/types.go: BootstrapTokenPattern; token/util/helpers.go: IsValidBootstrapToken |
| a K3s token (`K10<hash>::...`, `server:<pw>`, a short password) is not a kubeadm token | kubeadm authenticates with bootstrap tokens only (helpers.go); K3s's forms are K3s's (firstboot/token.py) |
| a pin is `<type>:<hex>` with type `sha256` (any case) and 64 hex digits (any case); kept lowercase | kubernetes cmd/kubeadm/app/util/pubkeypin/pubkeypin.go: Set.Allow, allowSHA256 |
| the pin is sha256 over the CA certificate's SubjectPublicKeyInfo (DER), not over the certificate or a file | pubkeypin.go: Hash (RawSubjectPublicKeyInfo); kubeadm-join reference ("--discovery-token-ca-cert-hash") |
| no pin is refused unless `allow_unpinned` (kubeadm's `--discovery-token-unsafe-skip-ca-verification`) | kubeadm's validation of discovery.bootstrapToken (caCertHashes or unsafeSkipCAVerification) |
| the server is the API server endpoint `host:port` (JoinConfiguration apiServerEndpoint), written `host:port` or `https://host:port`; the port is required (kubeadm's is 6443, a URL's default would be 443) | kubeadm join's `[api-server-endpoint]` argument |
| pifleet joins worker nodes only (`role: agent`); K3s keys (its flags, hash, registries, proxy env file, cluster creation) are refused, as is `ca_cert_hashes` with kind k3s | pifleet's rule: a key that does nothing is a mistake |

The token is never in a message; pins are public (kubeadm init prints them) and are shown.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from typing import Any

from builder.config.model import Cluster, Device
from builder.util.errors import UserError
from builder.util.secret import Secret
from builder.util.yamlfile import shown

Fail = Callable[[str, str], UserError]

KIND = "kubeadm"
_ID = re.compile(r"[a-z0-9]{6}")
_SECRET = re.compile(r"[a-z0-9]{16}")
_HEX64 = re.compile(r"[0-9A-Fa-f]{64}")
PIN_FORM = "sha256:<64 hex digits>"
PIN_HINT = "`pifleet token pin --kind kubeadm https://<control plane>:6443` prints it"

# cluster keys that only K3s reads, and why (the first words of the refusal).
K3S_CLUSTER_KEYS = {
    "ca_hash": "K3s's CA hash (sha256 of its CA file); kubeadm pins the CA's public key:"
    f" give cluster.ca_cert_hashes: ['{PIN_FORM}'] ({PIN_HINT})",
    "ca_file": "K3s's CA file pin; kubeadm pins the CA's public key:"
    f" give cluster.ca_cert_hashes: ['{PIN_FORM}'] ({PIN_HINT})",
    "create": "pifleet creates K3s clusters only; make the kubeadm control plane with kubeadm init",
    "servers": "K3s servers of a cluster pifleet creates",
    "agent_token": "K3s's agent-only token of a cluster pifleet creates",
    "initialized": "K3s clusters pifleet creates",
    "k3s_config": "K3s flags (config.yaml); kubelet flags go in cluster.kubelet_args",
    "node_ip": "a K3s flag; for kubeadm give node-ip=<address> in cluster.kubelet_args",
    "node_external_ip": "a K3s flag",
    "flannel_iface": "a K3s flag (K3s's built-in flannel); kubeadm's CNI is the cluster's own",
    "advertise_address": "a K3s server flag; pifleet joins kubeadm worker nodes only",
    "registries": "K3s's registries.yaml",
    "system_default_registry": "a K3s server flag",
    "embedded_registry": "a K3s server flag (Spegel)",
    "proxy": "K3s's env file",
}
KUBEADM_CLUSTER_KEYS = {
    "ca_cert_hashes": "kubeadm's pin (an SPKI hash); a K3s fleet pins with cluster.ca_hash or"
    " cluster.ca_file",
}
K3S_DEVICE_FIELDS = (
    "role",
    "k3s_config",
    "node_ip",
    "node_external_ip",
    "flannel_iface",
    "advertise_address",
)


def check_keys(value: dict[str, Any], kind: str, fail: Fail) -> None:
    """The keys of `cluster:` that the other kind reads are refused, one line naming the key."""
    if kind == KIND:
        wrong, other = K3S_CLUSTER_KEYS, "k3s"
    else:
        wrong, other = KUBEADM_CLUSTER_KEYS, KIND
    for key, why in wrong.items():
        if key in value:
            raise fail(f"cluster.{key}", f"only with cluster.kind: {other} ({why})")
    if kind == KIND and value.get("role", "agent") != "agent":
        raise fail(
            "cluster.role",
            "cluster.kind kubeadm joins worker nodes only (role: agent); join control-plane"
            " nodes with kubeadm join --control-plane yourself",
        )


def check_devices(raw_devices: Iterable[Any], fail: Fail) -> None:
    """Inline `devices:` items with a K3s-only key, for kind kubeadm."""
    for i, item in enumerate(raw_devices):
        for key in K3S_DEVICE_FIELDS:
            if isinstance(item, dict) and key in item:
                raise fail(
                    f"devices[{i}].{key}", f"only with cluster.kind: k3s ({_device_why(key)})"
                )


def check_merged(devices: Iterable[Device], where: str) -> None:
    """Inventory (devices_file) rows with a K3s-only setting, for kind kubeadm."""
    for device in devices:
        for key in K3S_DEVICE_FIELDS:
            if getattr(device, key) not in (None, ()):
                raise UserError(
                    f"{where}: devices_file: {device.hostname}: {key}: only with cluster.kind:"
                    f" k3s ({_device_why(key)})"
                )


def _device_why(key: str) -> str:
    return "K3s server roles" if key == "role" else K3S_CLUSTER_KEYS[key]


def ca_cert_hashes(value: list[Any], fail: Fail) -> tuple[str, ...]:
    """Each pin checked as kubeadm's pubkeypin checks it, kept as `sha256:<lowercase hex>`."""
    pins: list[str] = []
    for i, item in enumerate(value):
        problem = pin_problem(item)
        if problem:
            raise fail(f"cluster.ca_cert_hashes[{i}]", f"{problem}, got {shown(item)}")
        pins.append("sha256:" + str(item).split(":", 1)[1].lower())
    return tuple(dict.fromkeys(pins))


def pin_problem(value: object) -> str:
    """Why `value` is not a kubeadm CA pin ('' when it is)."""
    if not isinstance(value, str):
        return f"must be a string {PIN_FORM}"
    parts = value.split(":")
    if len(parts) != 2:
        return f"must be {PIN_FORM} (kubeadm's <type>:<hex>; {PIN_HINT})"
    kind, digits = parts
    if kind.lower() != "sha256":
        return f"unknown hash type {kind[:20]!r}: kubeadm knows sha256 only ({PIN_FORM})"
    if not _HEX64.fullmatch(digits):
        return f"a sha256 pin is 64 hex digits after 'sha256:', this has {len(digits)} characters"
    return ""


def check_pinned(cluster: Cluster, fail: Fail) -> None:
    """No pin at all is refused unless the fleet says allow_unpinned (kubeadm's rule)."""
    if not cluster.ca_cert_hashes and not cluster.allow_unpinned:
        raise fail(
            "cluster.ca_cert_hashes",
            f"required with cluster.kind kubeadm: without a pin a device trusts whichever server"
            f" answers at {cluster.api_server_endpoint} with its token; give ['{PIN_FORM}']"
            f" ({PIN_HINT}), or set cluster.allow_unpinned: true (kubeadm's"
            " --discovery-token-unsafe-skip-ca-verification)",
        )


def token_problem(text: str) -> str:
    """Why `text` is not a kubeadm bootstrap token ('' when it is); never shows the token."""
    value = text.strip()
    if not value:
        return "the token is empty"
    if value.startswith("K10"):
        return (
            "a K3s token (K10...) cannot join a kubeadm cluster: kubeadm takes a bootstrap token"
            " <id>.<secret> (`kubeadm token create` on the control plane makes one)"
        )
    token_id, dot, secret = value.partition(".")
    expected = "expected a kubeadm bootstrap token <6 of [a-z0-9]>.<16 of [a-z0-9]>"
    if not dot:
        return f"not a kubeadm bootstrap token (no '.'): {expected}"
    if not _ID.fullmatch(token_id):
        return f"the token id (before '.') is not 6 of [a-z0-9]: {expected}"
    if not _SECRET.fullmatch(secret):
        return f"the token secret (after '.') is not 16 of [a-z0-9]: {expected}"
    return ""


def bootstrap_token(text: str, where: str, key: str) -> Secret:
    """The bootstrap token read from `key` (cluster.token_file or cluster.token_env, by
    builder.config.token.read_token), checked; one-line errors naming the file and key,
    never the token."""
    problem = token_problem(text)
    if problem:
        raise UserError(f"{where}: {key}: {problem}")
    return Secret(text.strip())


def spki_pin(cert_pem: bytes) -> str:
    """kubeadm's pin of one PEM certificate: sha256 over its SubjectPublicKeyInfo DER."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()
