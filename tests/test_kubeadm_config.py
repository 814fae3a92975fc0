"""`cluster.kind: kubeadm` in the fleet file (builder/config/kubeadm.py): the bootstrap token,
`cluster.ca_cert_hashes`, `allow_unpinned`, the API server endpoint, the keys of the other kind
refused; tests/test_kubeadm_build.py builds the image.

Every refusal is one line, exit 2, no traceback, names the file and the key, never the token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.config.fleet import load
from builder.config.kubeadm import K3S_CLUSTER_KEYS, pin_problem, token_problem
from builder.config.model import Cluster
from builder.util.errors import UserError
from tests.conftest import fleet_yaml, pifleet
from tests.layouts import elf_for

TOKEN = "abcdef.0123456789abcdef"  # kubeadm's own example form; never printed
SECRET = TOKEN.split(".")[1]
PIN = "sha256:" + "7e" * 32
ELF = elf_for("arm64")


def cluster(**extra: str) -> str:
    lines = {"server": "cp.example.net:6443", "kind": "kubeadm", "token_file": "token"}
    lines |= {"ca_cert_hashes": f"['{PIN}']"} | extra
    return "cluster:\n" + "".join(f"  {k}: {v}\n" for k, v in lines.items() if v)


BINARIES = f"kubernetes:\n  kubeadm: {ELF}\n  kubelet: {ELF}\n  kubectl: {ELF}\n"


def fleet(
    tmp_path: Path, token: str = TOKEN, k3s: str = "", kubernetes: str = BINARIES, **extra: str
) -> Path:
    (tmp_path / "fleet.yaml").write_text(
        fleet_yaml(k3s=k3s, cluster=cluster(**extra), kubernetes=kubernetes)
    )
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "token").chmod(0o600)
    return tmp_path / "fleet.yaml"


def refused(tmp_path: Path, *needles: str, command: tuple[str, ...] = ()) -> str:
    """`pifleet build fleet.yaml` (or `command`) through the real CLI: one line, exit 2."""
    done = pifleet(*(command or ("build", "fleet.yaml")), cwd=tmp_path, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pifleet: error: "), done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert SECRET not in done.stdout + done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# -- what a valid kubeadm fleet file reads as ------------------------------------------------


@pytest.mark.parametrize(
    ("server", "url", "endpoint"),
    [
        ("cp.example.net:6443", "https://cp.example.net:6443", "cp.example.net:6443"),
        ("https://cp.example.net:6443/", "https://cp.example.net:6443", "cp.example.net:6443"),
        ("10.0.0.10:6443", "https://10.0.0.10:6443", "10.0.0.10:6443"),
        ("'[fd00::10]:6443'", "https://[fd00::10]:6443", "[fd00::10]:6443"),
    ],
)
def test_a_kubeadm_fleet_reads_into_the_model(
    tmp_path: Path, server: str, url: str, endpoint: str
) -> None:
    upper = "SHA256:" + "7E" * 32  # kubeadm accepts either case; kept lowercase
    config = load(fleet(tmp_path, server=server, ca_cert_hashes=f"['{upper}', '{PIN}']"))
    assert config.cluster.kind == "kubeadm"
    assert config.cluster.ca_cert_hashes == (PIN,)
    assert config.cluster.allow_unpinned is False
    assert (config.cluster.server, config.cluster.api_server_endpoint) == (url, endpoint)


def test_k3s_stays_the_default(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(fleet_yaml())
    config = load(tmp_path / "fleet.yaml")
    assert (config.cluster.kind, config.cluster.ca_cert_hashes) == ("k3s", ())
    assert Cluster("https://k:6443", None, "T", False, "agent", (), (), ()).kind == "k3s"


def test_allow_unpinned_takes_no_pin(tmp_path: Path) -> None:
    config = load(fleet(tmp_path, ca_cert_hashes="", allow_unpinned="true"))
    assert (config.cluster.ca_cert_hashes, config.cluster.allow_unpinned) == ((), True)


# -- refusals of the fleet file --------------------------------------------------------------

BAD_PINS = [
    ("'" + "7e" * 32 + "'", "cluster.ca_cert_hashes[0]: must be sha256:<64 hex digits>"),
    ("'md5:" + "7e" * 16 + "'", "cluster.ca_cert_hashes[0]: unknown hash type 'md5'"),
    ("'sha256:" + "7e" * 31 + "'", "64 hex digits after 'sha256:', this has 62 characters"),
    ("'sha256:" + "zz" * 32 + "'", "cluster.ca_cert_hashes[0]: a sha256 pin is 64 hex digits"),
    ("'sha256:" + "7e" * 32 + ":x'", "cluster.ca_cert_hashes[0]: must be sha256:"),
    ("' sha256:" + "7e" * 32 + "'", "unknown hash type ' sha256'"),
    ("5", "cluster.ca_cert_hashes[0]: must be a string"),
]


@pytest.mark.parametrize(("pin", "needle"), BAD_PINS)
def test_a_pin_not_in_kubeadm_form_is_refused_naming_the_item(
    tmp_path: Path, pin: str, needle: str
) -> None:
    fleet(tmp_path, ca_cert_hashes=f"['{PIN}', {pin}]")
    refused(tmp_path, "fleet.yaml: ", needle.replace("[0]", "[1]"))


def test_pin_problem_follows_pubkeypin() -> None:
    assert pin_problem("sha256:" + "aB" * 32) == ""
    assert pin_problem("Sha256:" + "ab" * 32) == ""
    assert pin_problem("sha256:" + "ab" * 32 + "a") != ""  # odd hex: kubeadm cannot decode it


def test_no_pin_is_refused_unless_allow_unpinned(tmp_path: Path) -> None:
    fleet(tmp_path, ca_cert_hashes="")
    line = refused(tmp_path, "fleet.yaml: cluster.ca_cert_hashes: required with cluster.kind")
    assert "allow_unpinned" in line and "--discovery-token-unsafe-skip-ca-verification" in line
    fleet(tmp_path, ca_cert_hashes="[]")
    refused(tmp_path, "fleet.yaml: cluster.ca_cert_hashes: required")


@pytest.mark.parametrize(
    ("server", "needle"),
    [
        ("https://cp.example.net", "cluster.server: give the port (kubeadm's API server endpoint"),
        ("cp.example.net", "cluster.server: must be an https:// URL"),
        ("http://cp.example.net:6443", "cluster.server: must be an https:// URL"),
        ("'https://-cp.example.net:6443'", "cluster.server: must be host:port or https://host"),
        ("cp.example.net:6443/x", "cluster.server: must be an https:// URL"),
        ("https://cp.example.net:6443/api", "must be host:port or https://host:port and nothing"),
        ("cp.example.net:99999", "cluster.server: port must be 1-65535"),
    ],
)
def test_the_server_is_an_api_server_endpoint(tmp_path: Path, server: str, needle: str) -> None:
    fleet(tmp_path, server=server)
    refused(tmp_path, "fleet.yaml: ", needle)


K3S_VALUES: dict[str, Any] = {
    "ca_hash": "7e" * 32,
    "ca_file": "ca.crt",
    "create": True,
    "servers": ["pi-1"],
    "agent_token": True,
    "initialized": False,
    "k3s_config": {"node-name": "x"},
    "node_ip": "10.0.0.5",
    "node_external_ip": "10.0.0.5",
    "flannel_iface": "eth0",
    "advertise_address": "10.0.0.5",
    "registries": {"mirrors": {}},
    "system_default_registry": "registry.example.net",
    "embedded_registry": True,
    "proxy": {"HTTP_PROXY": "http://proxy:3128"},
}


def test_every_k3s_only_key_has_a_case() -> None:
    assert sorted(K3S_VALUES) == sorted(K3S_CLUSTER_KEYS)


@pytest.mark.parametrize("key", sorted(K3S_VALUES))
def test_k3s_only_keys_are_refused_with_kubeadm(tmp_path: Path, key: str) -> None:
    fleet(tmp_path)
    raw = yaml.safe_load((tmp_path / "fleet.yaml").read_text())
    raw["cluster"][key] = K3S_VALUES[key]
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError) as info:
        load(tmp_path / "fleet.yaml")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'fleet.yaml'}: cluster.{key}: only with cluster.kind:")
    assert "\n" not in message and SECRET not in message


def test_the_clearest_k3s_refusals_through_the_cli(tmp_path: Path) -> None:
    fleet(tmp_path, ca_hash="'" + "7e" * 32 + "'")
    line = refused(tmp_path, "fleet.yaml: cluster.ca_hash: only with cluster.kind: k3s")
    assert "ca_cert_hashes" in line and "SubjectPublicKeyInfo" not in line
    fleet(tmp_path, role="server")
    refused(tmp_path, "fleet.yaml: cluster.role: cluster.kind kubeadm joins worker nodes only")
    fleet(tmp_path, k3s="k3s: {version: v1.33.1+k3s1}")
    refused(tmp_path, "fleet.yaml: k3s: only with cluster.kind: k3s")


def test_kubeadm_keys_are_refused_with_k3s(tmp_path: Path) -> None:
    fleet(tmp_path, kind="k3s", server="https://k3s.example.net:6443")
    refused(tmp_path, "fleet.yaml: cluster.ca_cert_hashes: only with cluster.kind: kubeadm")


@pytest.mark.parametrize(
    ("device", "key"),
    [
        ("{hostname: pi-1, node_ip: 10.0.0.5}", "node_ip"),
        ("{hostname: pi-1, k3s_config: {node-name: x}}", "k3s_config"),
        ("{hostname: pi-1, flannel_iface: eth0}", "flannel_iface"),
        ("{hostname: pi-1, role: agent}", "role"),
    ],
)
def test_k3s_device_keys_are_refused_with_kubeadm(tmp_path: Path, device: str, key: str) -> None:
    fleet(tmp_path)
    text = (
        tmp_path / "fleet.yaml"
    ).read_text() + f"devices:\n  - {{hostname: pi-0}}\n  - {device}\n"
    (tmp_path / "fleet.yaml").write_text(text)
    refused(tmp_path, f"fleet.yaml: devices[1].{key}: only with cluster.kind: k3s")


def test_k3s_keys_in_an_inventory_are_refused_with_kubeadm(tmp_path: Path) -> None:
    fleet(tmp_path)
    (tmp_path / "devices.yaml").write_text("- {hostname: pi-7, flannel_iface: wlan0}\n")
    with (tmp_path / "fleet.yaml").open("a") as f:
        f.write("devices_file: devices.yaml\n")
    refused(tmp_path, "fleet.yaml: devices_file: pi-7: flannel_iface: only with cluster.kind: k3s")


# -- the token ---------------------------------------------------------------------------------

BAD_TOKENS = [
    (
        "K10" + "7e" * 32 + "::server:" + SECRET,
        "a K3s token (K10...) cannot join a kubeadm cluster",
    ),
    ("K10" + "7e" * 32 + "::" + TOKEN, "a K3s token (K10...) cannot join a kubeadm cluster"),
    (SECRET + SECRET, "not a kubeadm bootstrap token (no '.')"),
    ("ABCDEF." + SECRET, "the token id (before '.') is not 6 of [a-z0-9]"),
    ("abcde." + SECRET, "the token id (before '.') is not 6 of [a-z0-9]"),
    ("abcdef." + SECRET.upper(), "the token secret (after '.') is not 16 of [a-z0-9]"),
    ("abcdef." + SECRET + "0", "the token secret (after '.') is not 16 of [a-z0-9]"),
    ("abcdef." + SECRET + "." + SECRET, "the token secret (after '.') is not 16"),
    ("", "the token is empty"),
    (TOKEN + "\n" + TOKEN, "the token holds more than one line"),
]


@pytest.mark.parametrize(("token", "needle"), BAD_TOKENS)
def test_only_a_bootstrap_token_joins_kubeadm(tmp_path: Path, token: str, needle: str) -> None:
    fleet(tmp_path, token=token)
    refused(tmp_path, "fleet.yaml: cluster.token_file: ", needle)


def test_the_token_from_the_environment_is_checked_too(tmp_path: Path) -> None:
    fleet(tmp_path, token_file="", token_env="KUBEADM_TOKEN")
    bad = "K10" + "7e" * 32 + "::node:" + SECRET
    done = pifleet("build", "fleet.yaml", cwd=tmp_path, env={"KUBEADM_TOKEN": bad}, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "fleet.yaml: cluster.token_env: a K3s token (K10...) cannot join" in done.stderr
    assert SECRET not in done.stderr + done.stdout


def test_token_problem_never_holds_the_token() -> None:
    for token, _needle in BAD_TOKENS:
        problem = token_problem(token)
        assert problem and (not token or token not in problem) and SECRET not in problem
    assert token_problem(TOKEN) == ""


# -- the token form, before anything is read or written ------------------------------------


def test_the_kubernetes_binaries_read_into_the_model(tmp_path: Path) -> None:
    sums = "  sha256: {kubelet: " + "AB" * 32 + "}\n"
    config = load(fleet(tmp_path, kubernetes=BINARIES + sums + "  test_standin: true\n"))
    assert config.kubernetes is not None
    assert [name for name, _ in config.kubernetes.files()] == ["kubeadm", "kubelet", "kubectl"]
    assert config.kubernetes.kubelet == ELF and config.kubernetes.test_standin
    assert config.kubernetes.sha256 == (("kubelet", "ab" * 32),)


@pytest.mark.parametrize(
    ("kubernetes", "needle"),
    [
        (f"kubernetes:\n  version: v1.34.1\n  kubeadm: {ELF}\n",
         "kubernetes: give kubernetes.version or the three binaries, not both"),
        (f"kubernetes:\n  kubeadm: {ELF}\n  kubectl: {ELF}\n",
         "kubernetes.kubelet: required without kubernetes.version"),
    ],
)  # fmt: skip
def test_a_release_or_three_files(tmp_path: Path, kubernetes: str, needle: str) -> None:
    fleet(tmp_path, kubernetes=kubernetes)
    refused(tmp_path, "fleet.yaml: " + needle)


def test_a_kubeadm_fleet_needs_its_binaries(tmp_path: Path) -> None:
    fleet(tmp_path, kubernetes="")
    refused(tmp_path, "fleet.yaml: kubernetes: required with cluster.kind: kubeadm")


def test_a_k3s_fleet_has_no_kubernetes_binaries(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(fleet_yaml(kubernetes=BINARIES))
    (tmp_path / "token").write_text("K10" + "a" * 64 + "::node:secret\n")
    (tmp_path / "token").chmod(0o600)
    refused(tmp_path, "fleet.yaml: kubernetes: only with cluster.kind: kubeadm")


def test_personalize_checks_the_token_form_first(tmp_path: Path) -> None:
    """A kubeadm fleet's token is checked before anything is read or written: a K3s token
    says so."""
    fleet(tmp_path, token="K10" + "7e" * 32 + "::server:" + SECRET)
    with (tmp_path / "fleet.yaml").open("a") as f:
        f.write("devices:\n  - {hostname: pi-1}\n")
    command = ("personalize", "golden.img", "--config", "fleet.yaml", "--device", "pi-1")
    refused(tmp_path, "cluster.token_file: a K3s token", command=command)
