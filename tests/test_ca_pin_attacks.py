"""The attacker who knows only the server's public CA bundle (issue 21, item 1).

Each case is a real TLS server on 127.0.0.1 that plays the man in the middle: it serves a
crafted `/cacerts` (the real, public certificates plus forged ones), presents a serving
certificate signed by a key of its own, answers 200 everywhere, and logs every request with
its Authorization header. The device's path (fetch, pin, prove: firstboot.checkserver, the
same calls the agent's verify state makes), `pifleet token check` and `pifleet token pin` each
run against it, and no credential may arrive.

Before the fix the pin chose the root by subject and issuer names: a self-signed certificate
named like the real root (or like its intermediate) made the hash match, became a trust
anchor, and the agent sent `Basic node:<password>` to the attacker.
"""

from __future__ import annotations

import datetime
import hashlib
import http.server
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from builder.testserver.ca import ServerCA
from builder.testserver.server import K3sTestServer
from firstboot import checkserver
from firstboot import x509 as pin_x509
from firstboot.token import parse
from tests.conftest import pifleet

PASSWORD = "attacker-must-never-see-this-0123"
BOOT_SECRET = "s3cr3tb00tstrap9"  # a bootstrap token's secret: [a-z0-9]{16}


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class Forger:
    """Makes certificates with an attacker's key, named as the attacker likes."""

    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    def cert(
        self,
        subject: x509.Name,
        issuer: x509.Name | None = None,
        ski: bytes | None = None,
        aki: bytes | None = None,
        signer: ec.EllipticCurvePrivateKey | None = None,
        ca: bool = True,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer or subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(days=1))
            .not_valid_after(_now() + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ski is not None:
            builder = builder.add_extension(x509.SubjectKeyIdentifier(ski), critical=False)
        if aki is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier(aki, None, None), critical=False
            )
        return builder.sign(signer or self.key, hashes.SHA256())

    def leaf(self, signer: ec.EllipticCurvePrivateKey, issuer: x509.Name) -> tuple[bytes, bytes]:
        """(serving certificate PEM, its key PEM), signed by `signer` as `issuer`."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "k3s")]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(days=1))
            .not_valid_after(_now() + datetime.timedelta(days=30))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(  # points OpenSSL at the forged issuer among same-named ones
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                critical=False,
            )
            .sign(signer, hashes.SHA256())
        )
        pem_key = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), pem_key


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def ids(cert: x509.Certificate) -> tuple[bytes, bytes]:
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    return ski, aki.key_identifier


class AttackerServer:
    """HTTPS on 127.0.0.1: a crafted /cacerts, 200 for everything else, every request logged."""

    def __init__(self, directory: Path, cacerts: bytes, chain: bytes, key: bytes) -> None:
        self.seen: list[tuple[str, str | None]] = []
        (directory / "mitm.crt").write_bytes(chain)
        (directory / "mitm.key").write_bytes(key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(directory / "mitm.crt", directory / "mitm.key")
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.seen.append((self.path, self.headers.get("Authorization")))
                body = cacerts if self.path == "/cacerts" else b"ok"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"

    def credentials(self) -> list[str]:
        return [auth for _path, auth in self.seen if auth]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> ServerCA:
    """The victim cluster's custom CA: server-ca <- intermediate <- root (all public)."""
    return ServerCA(tmp_path_factory.mktemp("real-ca"), "bundle")


def _certs(ca: ServerCA) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
    server_ca, intermediate, root = x509.load_pem_x509_certificates(ca.cacerts)
    return server_ca, intermediate, root


def _attacks(real: ServerCA) -> dict[str, tuple[bytes, bytes, bytes]]:
    """name -> (/cacerts body, serving chain PEM, serving key PEM) of each attack."""
    server_ca, intermediate, root = _certs(real)
    public = real.cacerts
    attacks: dict[str, tuple[bytes, bytes, bytes]] = {}
    evil = Forger()
    fake_root = evil.cert(root.subject)  # same name as the root, no key identifiers
    leaf = evil.leaf(evil.key, root.subject)
    attacks["forged root first"] = (pem(fake_root) + pem(root), *leaf)
    attacks["forged root first, whole real chain after"] = (pem(fake_root) + public, *leaf)
    attacks["forged root after the real chain"] = (public + pem(fake_root), *leaf)
    root_ski, _ = ids(root)
    int_ski, int_aki = ids(intermediate)
    fake_int = evil.cert(intermediate.subject, root.subject, ski=int_ski, aki=int_aki)
    int_leaf = evil.leaf(evil.key, intermediate.subject)
    attacks["forged intermediate before the root"] = (pem(fake_int) + pem(root), *int_leaf)
    attacks["forged intermediate after the real chain"] = (public + pem(fake_int), *int_leaf)
    copied = evil.cert(root.subject, ski=root_ski, aki=root_ski)  # the root's key ids, copied
    attacks["forged key identifiers first"] = (pem(copied) + pem(root), *leaf)
    attacks["forged key identifiers after"] = (public + pem(copied), *leaf)
    signer_ski, signer_aki = ids(server_ca)
    fake_signer = evil.cert(server_ca.subject, intermediate.subject, signer_ski, signer_aki)
    signer_leaf = evil.leaf(evil.key, server_ca.subject)
    attacks["forged server-ca first"] = (
        pem(fake_signer) + public[len(pem(server_ca)) :],
        *signer_leaf,
    )
    a, b = Forger(), Forger()
    name_a = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "loop-a")])
    name_b = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "loop-b")])
    cert_a = a.cert(name_a, name_b, ski=b"A" * 20, aki=b"B" * 20, signer=b.key)
    cert_b = b.cert(name_b, name_a, ski=b"B" * 20, aki=b"A" * 20, signer=a.key)
    loop_leaf = a.leaf(a.key, name_a)
    attacks["a cycle before the root"] = (pem(cert_a) + pem(cert_b) + pem(root), *loop_leaf)
    attacks["a cycle after the real chain"] = (public + pem(cert_a) + pem(cert_b), *loop_leaf)
    many = b"".join(pem(Forger().cert(root.subject)) for _ in range(12))
    attacks["15 certificates, 12 forged roots after"] = (public + many, *leaf)
    fifty = b"".join(pem(evil.cert(root.subject)) for _ in range(47))
    attacks["50 certificates"] = (public + fifty, *leaf)
    return attacks


ATTACKS = [
    "forged root first",
    "forged root first, whole real chain after",
    "forged root after the real chain",
    "forged intermediate before the root",
    "forged intermediate after the real chain",
    "forged key identifiers first",
    "forged key identifiers after",
    "forged server-ca first",
    "a cycle before the root",
    "a cycle after the real chain",
    "15 certificates, 12 forged roots after",
    "50 certificates",
]


@pytest.fixture(scope="module")
def attacks(real: ServerCA) -> dict[str, tuple[bytes, bytes, bytes]]:
    return _attacks(real)


@pytest.fixture
def attacker(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    attacks: dict[str, tuple[bytes, bytes, bytes]],
) -> Iterator[AttackerServer]:
    body, chain, key = attacks[request.param]
    server = AttackerServer(tmp_path, body, chain, key)
    yield server
    server.close()


def _tokens(real: ServerCA) -> list[str]:
    return [
        f"K10{real.ca_hash}::node:{PASSWORD}",
        f"K10{real.ca_hash}::server:{PASSWORD}",
        f"K10{real.ca_hash}::abcdef.{BOOT_SECRET}",
    ]


@pytest.mark.parametrize("attacker", ATTACKS, indirect=True)
def test_the_device_sends_nothing_to_a_forged_bundle(
    attacker: AttackerServer, real: ServerCA
) -> None:
    lines = [
        checkserver.check(attacker.url, parse(text), 5, role)
        for text in _tokens(real)
        for role in ("agent", "server")
    ]
    assert attacker.credentials() == []
    for ok, line in lines:
        assert not ok and "\n" not in line
        assert line.startswith("CA hash mismatch: "), line
        assert PASSWORD not in line and BOOT_SECRET not in line
    assert {path for path, _auth in attacker.seen} == {"/cacerts"}


@pytest.mark.parametrize(
    "attacker",
    ["forged root after the real chain", "forged intermediate before the root"],
    indirect=True,
)
def test_token_check_and_token_pin_refuse_a_forged_bundle(
    attacker: AttackerServer, real: ServerCA, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"K10{real.ca_hash}::node:{PASSWORD}\n")
    token_file.chmod(0o600)
    check = pifleet(
        "token", "check", "--server", attacker.url, "--token-file", str(token_file), cwd=tmp_path
    )
    assert check.returncode == 1, check.stderr
    out = tmp_path / "pinned"
    pin = pifleet(
        "token",
        "pin",
        attacker.url,
        "--token-file",
        str(token_file),
        "-o",
        str(out),
        "--yes",
        cwd=tmp_path,
    )
    assert pin.returncode != 0 and not out.exists()
    for result in (check, pin):
        text = result.stdout + result.stderr
        assert PASSWORD not in text and "Traceback" not in text
        assert len(text.strip().splitlines()) == 1, text
    assert attacker.credentials() == []


def test_an_honest_bundle_still_joins(tmp_path: Path) -> None:
    """root + intermediate + server-ca, and the serving chain verifies to the pinned root."""
    with K3sTestServer(state_dir=tmp_path, ca_kind="bundle") as server:
        for text in (server.mint_token("node"), server.mint_token("bootstrap")):
            ok, line = checkserver.check(server.url, parse(text), 5)
            assert ok, line
        ok, line = checkserver.check(server.url, parse(server.mint_token()), 5, "server")
        assert ok, line


def test_the_pin_trusts_only_the_root_and_what_it_signed(real: ServerCA) -> None:
    server_ca, intermediate, root = _certs(real)
    found = pin_x509.pin(real.cacerts)
    root_der = root.public_bytes(serialization.Encoding.DER)
    assert found.ca_hash == hashlib.sha256(root_der).hexdigest() == real.ca_hash
    assert found.problem == "" and not found.partial_chain  # only the self-signed root anchors
    trusted = x509.load_pem_x509_certificates(found.trust)
    assert trusted[0] == root and set(trusted) == {root, intermediate, server_ca}


@pytest.mark.parametrize("name", ATTACKS)
def test_no_forged_certificate_is_ever_trusted(
    name: str, attacks: dict[str, tuple[bytes, bytes, bytes]], real: ServerCA
) -> None:
    body = attacks[name][0]
    found = pin_x509.pin(body)
    real_certs = set(_certs(real))
    if found.ca_hash == real.ca_hash:
        assert found.problem, name  # the hash matches, so the forged certificates are refused
    trusted = set(x509.load_pem_x509_certificates(found.trust)) if found.trust else set()
    if found.ca_hash == real.ca_hash:
        assert trusted <= real_certs
