"""The agent's token parser and CA hash, against K3s's rules (pkg/clientaccess/token.go)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import serialization

from builder.testserver.server import K3sTestServer
from firstboot import x509
from firstboot.token import TokenError, hash_problem, parse

H = "ab" * 32
BOOT = "abcdef.0123456789abcdef"

# (token, form, ca_hash, username, password, bootstrap)
VALID = [
    (f"K10{H}::server:pw", "k10-user", H, "server", "pw", False),
    (f"K10{H}::node:pw", "k10-user", H, "node", "pw", False),
    (f"K10{H}::node:p:w", "k10-user", H, "node", "p:w", False),  # split at the first ':'
    (f"K10{H}:::pw", "k10-user", H, "", "pw", False),  # the user may be empty
    (f"K10{H}::{BOOT}", "k10-bootstrap", H, "", BOOT, True),
    (f"K10::{BOOT}", "bootstrap", None, "", BOOT, True),
    (BOOT, "bootstrap", None, "", BOOT, True),
    ("K10::server:pw", "short", None, "server", "pw", False),
    ("K10node:pw", "short", None, "node", "pw", False),  # no '::': all credentials
    ("just-a-password", "short", None, "", "just-a-password", False),
    ("server:abc", "short", None, "", "server:abc", False),  # bare: the whole text
    (f"k10{H}::server:pw", "short", None, "", f"k10{H}::server:pw", False),  # K10 is case-sensitive
    (f"K20{H}::server:pw", "short", None, "", f"K20{H}::server:pw", False),
    ("ABCDEF.0123456789ABCDEF", "short", None, "", "ABCDEF.0123456789ABCDEF", False),
    (f"  K10{H}::server:pw\n", "k10-user", H, "server", "pw", False),  # the file's newline
]

# (token, what the one line must say)
MALFORMED = [
    ("", "the token is empty"),
    ("  \n", "the token is empty"),
    ("K10secret", "invalid token format: after K10 expected <user>:<password>"),
    ("K10::pw", "invalid token format: after '::' expected"),
    (f"K10{H}::pw", "invalid token format: after '::' expected"),
    (f"K10{H}::server:", "the password after 'server:' is empty"),
    ("K10abc::server:pw", "invalid token CA hash length: the part between K10 and '::' has 3"),
    ("K10" + "a" * 65 + "::server:pw", "has 65 characters, a sha256 has 64"),
    (f"K10{H}::abcdef.0123", "invalid token format: after '::' expected"),
]


@pytest.mark.parametrize(("text", "form", "ca_hash", "user", "password", "bootstrap"), VALID)
def test_every_token_form_parses_as_k3s_parses_it(
    text: str, form: str, ca_hash: str | None, user: str, password: str, bootstrap: bool
) -> None:
    token = parse(text)
    assert (token.form, token.ca_hash, token.username, token.password(), token.bootstrap) == (
        form,
        ca_hash,
        user,
        password,
        bootstrap,
    )
    assert token.pinned == (ca_hash is not None)
    assert password not in repr(token) and password not in str(token)


@pytest.mark.parametrize(("text", "message"), MALFORMED)
def test_every_malformed_form_gets_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(TokenError) as caught:
        parse(text)
    line = str(caught.value)
    assert message in line and "\n" not in line
    secret = text.strip().rpartition(":")[2]
    assert not secret or len(secret) < 3 or secret not in line


def test_authorization_and_the_pinned_form_k3s_keeps() -> None:
    token = parse("pw")
    assert token.authorization("node") == "Basic bm9kZTpwdw=="  # node:pw, whatever the token said
    assert parse(f"K10{H}::server:pw").authorization("node") == "Basic bm9kZTpwdw=="
    assert parse(BOOT).authorization("node") == f"Bearer {BOOT}"
    assert token.pinned_text(H, "node") == f"K10{H}::node:pw"
    assert parse(BOOT).pinned_text(H, "node") == f"K10{H}::{BOOT}"
    assert hash_problem(parse(f"K10{H.upper()}::server:pw")) != ""
    assert hash_problem(parse(f"K10{H}::server:pw")) == ""


@pytest.mark.parametrize("kind", ["single", "bundle"])
def test_ca_hash_is_k3s_hashca(tmp_path: Path, kind: str) -> None:
    server = K3sTestServer(state_dir=tmp_path, ca_kind=kind)
    body = server.ca.cacerts
    digest, trust = x509.hash_ca(body)
    certs = cx509.load_pem_x509_certificates(body)
    if kind == "single":
        assert digest == hashlib.sha256(body).hexdigest() and trust == body
    else:
        root_der = certs[-1].public_bytes(serialization.Encoding.DER)
        assert digest == hashlib.sha256(root_der).hexdigest()  # openssl's SHA-256 fingerprint
        assert len(x509.split(trust)) == 3
    assert digest == server.ca_hash


def test_bundle_that_does_not_chain_hashes_the_body(tmp_path: Path) -> None:
    a = K3sTestServer(state_dir=tmp_path / "a", ca_kind="bundle").ca
    b = K3sTestServer(state_dir=tmp_path / "b", ca_kind="single").ca
    parts = x509.split(a.cacerts)
    for body in (
        parts[2] + parts[0] + parts[1],  # root first: nothing later is its issuer
        parts[0] + b.cacerts,  # the only root is not the issuer
        parts[0] + parts[2],  # the intermediate is missing
        a.cacerts + b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    ):
        assert x509.hash_ca(body)[0] == hashlib.sha256(body).hexdigest()
    # AKI == SKI makes a root even when it is not first; extra certs after the chain are ignored
    digest, trust = x509.hash_ca(a.cacerts + b.cacerts)
    assert digest == a.ca_hash and b.cacerts not in trust


def test_der_reader_reads_subject_issuer_and_key_ids(tmp_path: Path) -> None:
    ca = K3sTestServer(state_dir=tmp_path, ca_kind="bundle").ca
    parsed = [x509.parse(pem) for pem in x509.split(ca.cacerts)]
    real = cx509.load_pem_x509_certificates(ca.cacerts)
    for mine, theirs in zip(parsed, real, strict=True):
        assert mine.subject == theirs.subject.public_bytes()
        assert mine.issuer == theirs.issuer.public_bytes()
        ski = theirs.extensions.get_extension_for_class(cx509.SubjectKeyIdentifier).value
        aki = theirs.extensions.get_extension_for_class(cx509.AuthorityKeyIdentifier).value
        assert mine.ski == ski.digest and mine.aki == aki.key_identifier
    with pytest.raises(x509.CertError):
        x509.parse(b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n")
