"""Certificate authorities for the K3s test server, laid out as K3s lays them out.

single  one self-signed ECDSA P-256 `k3s-server-ca@<ts>` (K3s's default): /cacerts is that
        certificate, and the token hash is sha256 of the /cacerts body.
bundle  a custom CA as contrib/util/generate-custom-ca-certs.sh makes it: a self-signed root,
        an intermediate signed by the root, and `k3s-server-ca` signed by the intermediate.
        /cacerts is server-ca + intermediate + root (three PEM certificates), and the token
        hash is sha256 of the root's DER (K3s hashCA).

The serving certificate is signed by k3s-server-ca and sent with its chain up to, not
including, the root. It names the URL host or, with `named=False`, only names that no
client uses (tls-san-security: K3s >= 1.28 adds no SAN a client asks for).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from builder.util.atomic import write_atomic

CA_KINDS = ("single", "bundle")
UNNAMED_SANS = ("k3s.invalid", "kubernetes", "kubernetes.default")


def name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class CertificateAuthority:
    """An ECDSA P-256 CA, self-signed or signed by `parent`; kept in `directory` (one found
    there may be RSA, as `pifleet cluster init`'s root and intermediate are)."""

    def __init__(
        self, directory: Path, stem: str, parent: CertificateAuthority | None = None
    ) -> None:
        key_path, cert_path = directory / f"{stem}.key", directory / f"{stem}.crt"
        self.key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        if key_path.exists() and cert_path.exists():
            loaded = serialization.load_pem_private_key(key_path.read_bytes(), None)
            assert isinstance(loaded, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey))
            self.key = loaded
            self.cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            return
        made = self.key = ec.generate_private_key(ec.SECP256R1())
        subject = name(f"{stem}@{int(now().timestamp())}")
        issuer_key = parent.key if parent else self.key
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        aki = (
            x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key())
            if parent
            else x509.AuthorityKeyIdentifier(ski.digest, None, None)
        )
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(parent.cert.subject if parent else subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now() - datetime.timedelta(days=1))
            .not_valid_after(now() + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, True, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(aki, critical=False)
            .sign(issuer_key, hashes.SHA256())
        )
        write_atomic(key_path, _pem_key(made), 0o600)
        write_atomic(cert_path, self.pem, 0o644)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def issue(
        self,
        subject: x509.Name,
        public_key: Any,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName] | None = None,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now() - datetime.timedelta(hours=1))
            .not_valid_after(now() + datetime.timedelta(days=365))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256())


class ServerCA:
    """The server CA of one kind, its /cacerts body and the hash K3s computes for it."""

    def __init__(self, directory: Path, kind: str) -> None:
        if kind not in CA_KINDS:
            raise ValueError(f"CA kind must be one of {', '.join(CA_KINDS)}: {kind}")
        self.kind = kind
        if kind == "single":
            self.signer = CertificateAuthority(directory, "server-ca")
            self.root = self.signer
            self.chain: list[CertificateAuthority] = []
        else:
            self.root = CertificateAuthority(directory, "root-ca")
            intermediate = CertificateAuthority(directory, "intermediate-ca", self.root)
            self.signer = CertificateAuthority(directory, "bundle-server-ca", intermediate)
            self.chain = [self.signer, intermediate]

    @property
    def cacerts(self) -> bytes:
        """What GET /cacerts answers: server-ca.crt byte for byte."""
        if self.kind == "single":
            return self.signer.pem
        return b"".join(ca.pem for ca in self.chain) + self.root.pem

    @property
    def ca_hash(self) -> str:
        """K3s hashCA: one cert -> sha256 of the body; a chain -> sha256 of the root's DER."""
        if self.kind == "single":
            return hashlib.sha256(self.cacerts).hexdigest()
        return hashlib.sha256(self.root.der).hexdigest()

    def serving_chain(
        self, hosts: tuple[str, ...], named: bool
    ) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
        """(leaf + chain PEM, key) for the listener; `named=False` leaves every host out."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in UNNAMED_SANS]
        for item in hosts if named else ():
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(item)))
            except ValueError:
                sans.append(x509.DNSName(item))
        leaf = self.signer.issue(
            name("k3s"), key.public_key(), ExtendedKeyUsageOID.SERVER_AUTH, sans
        )
        chain = b"".join(ca.pem for ca in self.chain[1:]) if self.chain else b""
        signer = self.signer.pem if self.kind == "bundle" else b""
        return leaf.public_bytes(serialization.Encoding.PEM) + signer + chain, key


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return _pem_key(key)
