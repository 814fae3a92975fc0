"""A hostile review of issue 24's inputs (engineer R): values that would carry a secret into a
world-readable file, or that K3s's own YAML parser would refuse, and what the device reads
from the network.

Each test is what an attacker or a demanding user would try; each failed on the code before
its fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from builder.config import k3sconfig
from builder.config.fleet import load
from builder.util.errors import UserError
from firstboot import k3sfiles

SERVER = "https://k3s.example.net:6443"
SECRET = "s3cr3t-Pa55"


def fleet(tmp_path: Path, k3s_config: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"name: f\ncluster:\n  server: {SERVER}\n  token_env: TOK\n  role: server\n"
        f"  k3s_config: {{{k3s_config}}}\ndevices:\n  - hostname: pi-1\n"
    )
    return path


# -- a credential in any k3s_config value would sit in /etc/pifleet/join.json (0644) ------------

CREDENTIALS = (
    f"etcd-s3-proxy: 'http://proxyuser:{SECRET}@proxy.lan:3128'",
    f"etcd-s3-endpoint: 'https://AKIAEXAMPLE:{SECRET}@s3.lan'",
    f"kube-apiserver-arg: ['etcd-servers=https://root:{SECRET}@etcd.lan:2379']",
    f"datastore-endpoint: 'host=db.lan user=k3s PASSWORD = {SECRET}'",
    f"etcd-arg: ['listen-metrics-urls=http://127.0.0.1:2381', 'x=mysql://u:{SECRET}@tcp(h)/d']",
)


@pytest.mark.parametrize("value", CREDENTIALS)
def test_a_password_in_any_k3s_config_value_is_refused_unshown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("TOK", "K10" + "ab" * 32 + "::server:x")
    with pytest.raises(UserError) as info:
        config = load(fleet(tmp_path, value))
        pytest.fail(f"accepted, join.json would hold {k3sconfig.for_role(config, 'server')}")
    message = str(info.value)
    assert f"cluster.k3s_config.{value.split(':')[0]}" in message, message
    assert "credential" in message and "0644" in message, message
    assert SECRET not in message, "the refusal shows the password"


@pytest.mark.parametrize(
    "value",
    (
        "etcd-s3-proxy: 'http://proxy.lan:3128'",
        "etcd-s3-endpoint: 'https://user@s3.lan'",
        "kube-apiserver-arg: ['oidc-issuer-url=https://issuer.lan/realms/x']",
        "datastore-endpoint: 'https://etcd1.lan:2379,https://etcd2.lan:2379'",
    ),
)
def test_values_without_a_password_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("TOK", "K10" + "ab" * 32 + "::server:x")
    config = load(fleet(tmp_path, value))
    assert value.split(":")[0] in k3sconfig.for_role(config, "server")


# -- config.yaml as K3s's go-yaml v2 reads it -------------------------------------------------

# go-yaml v2 refuses these in a double-quoted scalar (scannerc.go: a \u escape of a surrogate,
# "found invalid Unicode character escape code"; readerc.go: a raw DEL, C1 control or U+FFFE)
GO_YAML_REFUSES = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}|\\u[dD][c-fC-F][0-9a-fA-F]{2}|[\x7f-\x9f\ufffe]"
)


@pytest.mark.parametrize(
    "value",
    (
        "/var/lib/snapshots/\U0001f4e6",  # a character above U+FFFF: JSON's surrogate pair
        "caf\u00e9 \u2028 \u0085 \x7f end",  # a line separator, NEL and DEL stay one scalar
        'quote " backslash \\ newline \n # not: a comment\n---\ntoken: x',
    ),
)
def test_config_yaml_values_read_back_as_go_yaml_reads_them(value: str) -> None:
    text = k3sfiles.config_yaml(
        "https://k3s.lan:6443",
        "pi-1",
        [],
        [],
        [],
        extra={"etcd-snapshot-dir": value, "etcd-arg": [value]},
    ).decode()
    assert not GO_YAML_REFUSES.search(text), f"K3s's YAML parser refuses: {text!r}"
    assert text.isascii()
    document = yaml.safe_load(text)
    assert document["etcd-snapshot-dir"] == value and document["etcd-arg"] == [value]
    assert document["token-file"] == k3sfiles.TOKEN_PATH and "token" not in document
