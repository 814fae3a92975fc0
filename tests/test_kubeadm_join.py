"""firstboot/kubeadm_join.py: the JoinConfiguration (kubeadm.k8s.io/v1beta4) the agent hands
`kubeadm join --config`, read back with a YAML parser as kubeadm reads it."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from firstboot import joinconfig
from firstboot.kubeadm_join import (
    API_VERSION,
    JoinConfigurationError,
    join_configuration,
    kubelet_extra_args,
    taint,
)

TOKEN = "abcdef.0123456789abcdef"
PIN = "sha256:" + "ab" * 32


def read(**kw: object) -> dict[str, object]:
    args: dict[str, object] = {
        "node_name": "edge-007", "endpoint": "10.0.0.1:6443", "token": TOKEN,
        "ca_cert_hashes": [PIN], "labels": [], "taints": [], "kubelet_args": [],
    }  # fmt: skip
    args.update(kw)
    loaded = yaml.safe_load(join_configuration(**args))  # type: ignore[arg-type]
    assert isinstance(loaded, dict)
    return loaded


def test_the_join_configuration_as_kubeadm_reads_it() -> None:
    config = read(
        labels=["node.kubernetes.io/site=lab"], taints=["dedicated=edge:NoSchedule"],
        kubelet_args=["max-pods=50", "--rotate-certificates"],
    )  # fmt: skip
    assert config["apiVersion"] == API_VERSION and config["kind"] == "JoinConfiguration"
    assert config["nodeRegistration"] == {
        "name": "edge-007",
        "criSocket": "unix:///run/containerd/containerd.sock",
        "taints": [{"key": "dedicated", "value": "edge", "effect": "NoSchedule"}],
        "kubeletExtraArgs": [
            {"name": "node-labels", "value": "node.kubernetes.io/site=lab"},
            {"name": "max-pods", "value": "50"},
            {"name": "rotate-certificates", "value": "true"},
        ],
    }
    assert config["discovery"] == {
        "bootstrapToken": {
            "token": TOKEN, "apiServerEndpoint": "10.0.0.1:6443", "caCertHashes": [PIN],
        }
    }  # fmt: skip


def test_no_taints_is_an_empty_list_not_kubeadms_default() -> None:
    assert read()["nodeRegistration"]["taints"] == []  # type: ignore[index]


def test_no_pin_is_written_as_kubeadms_unsafe_skip_and_a_pin_never_is() -> None:
    unpinned = read(ca_cert_hashes=[])["discovery"]["bootstrapToken"]  # type: ignore[index]
    assert unpinned["unsafeSkipCAVerification"] is True and "caCertHashes" not in unpinned
    pinned = read()["discovery"]["bootstrapToken"]  # type: ignore[index]
    assert "unsafeSkipCAVerification" not in pinned


@pytest.mark.parametrize(
    "hostile",
    [
        'x"\n  kind: Pod\n',  # a quote and a new line: an attempt to add keys
        "x\nunsafeSkipCAVerification: true",
        "x\u2028y",  # a line separator
        "x\x00y",
        "x,node-role.kubernetes.io/control-plane=",  # a comma: a second label
    ],
)
def test_a_hostile_label_is_refused_not_written(hostile: str) -> None:
    with pytest.raises(JoinConfigurationError, match="not a Kubernetes label"):
        read(labels=[f"node.kubernetes.io/site={hostile}"])


@pytest.mark.parametrize("taint_text", ['x"\n  kind: Pod\n=v:NoSchedule', "k=v\nx: 1:NoExecute"])
def test_a_hostile_taint_stays_one_string(taint_text: str) -> None:
    config = read(taints=[taint_text])
    taints = config["nodeRegistration"]["taints"]  # type: ignore[index]
    assert len(taints) == 1 and taints[0]["effect"] in ("NoSchedule", "NoExecute")
    assert "unsafeSkipCAVerification" not in config["discovery"]["bootstrapToken"]  # type: ignore[index]
    assert set(config) == {"apiVersion", "kind", "nodeRegistration", "discovery"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dedicated=edge", "must be key[=value]:effect"),
        ("dedicated=edge:Sometimes", "must be key[=value]:effect"),
        ("=edge:NoSchedule", "the key is empty"),
    ],
)
def test_a_bad_taint_is_named(text: str, message: str) -> None:
    with pytest.raises(JoinConfigurationError, match=re.escape(message)):
        taint(text)


def test_a_bad_kubelet_argument_is_named_and_the_token_never_is() -> None:
    with pytest.raises(JoinConfigurationError) as raised:
        kubelet_extra_args([], ["Max Pods=50"])
    assert "Max Pods=50" in str(raised.value)
    with pytest.raises(JoinConfigurationError) as raised:
        read(taints=["bad"])
    assert TOKEN not in str(raised.value) and TOKEN.split(".")[1] not in str(raised.value)


def test_a_taint_without_a_value() -> None:
    assert taint("node.kubernetes.io/edge:NoExecute") == {
        "key": "node.kubernetes.io/edge", "effect": "NoExecute",
    }  # fmt: skip


# The join config's kubeadm keys (firstboot/joinconfig.py): written only for a kubeadm fleet.
def kubeadm_join(**kw: object) -> joinconfig.JoinConfig:
    fields: dict[str, object] = {"server": "https://10.0.0.1:6443", "kind": "kubeadm"}
    fields.update(kw)
    return joinconfig.JoinConfig(**fields)  # type: ignore[arg-type]


def test_a_k3s_join_config_carries_no_kubeadm_key() -> None:
    dumped = json.loads(joinconfig.dump_join_config(joinconfig.JoinConfig(server="https://s:6443")))
    assert not set(joinconfig.KUBEADM_KEYS) & set(dumped)
    assert joinconfig.load_join_config(json.dumps(dumped).encode()).kind == "k3s"


def test_a_kubeadm_join_config_round_trips() -> None:
    config = kubeadm_join(ca_cert_hashes=[PIN])
    assert joinconfig.load_join_config(joinconfig.dump_join_config(config)) == config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "k8s"}, "kind: must be 'k3s' or 'kubeadm'"),
        ({}, "ca_cert_hashes: a kubeadm join needs a CA pin"),
        ({"ca_cert_hashes": ["sha256:AB"]}, "is not sha256:<64 hex>"),
        ({"ca_cert_hashes": ["md5:" + "ab" * 16]}, "is not sha256:<64 hex>"),
        ({"ca_cert_hashes": "sha256:" + "ab" * 32}, "ca_cert_hashes: must be a list of strings"),
        ({"allow_unpinned": "yes"}, "allow_unpinned: must be true or false"),
        ({"ca_cert_hashes": [PIN], "kubeadm_binary": "kubeadm"}, "must be an absolute path"),
    ],
)
def test_a_bad_kubeadm_key_is_named(changes: dict[str, object], message: str) -> None:
    raw = json.loads(joinconfig.dump_join_config(kubeadm_join(ca_cert_hashes=[PIN])))
    raw.pop("ca_cert_hashes")
    raw.update(changes)
    with pytest.raises(joinconfig.JoinConfigError, match=re.escape(message)):
        joinconfig.load_join_config(json.dumps(raw).encode(), "join.json")


def test_allow_unpinned_stands_in_for_a_pin() -> None:
    raw = joinconfig.dump_join_config(kubeadm_join(allow_unpinned=True))
    assert joinconfig.load_join_config(raw).allow_unpinned is True
