"""A K3s cluster's certificate authorities, made before any server starts.

The files and their shape follow K3s's "custom CA certificates" layout, as its
contrib/util/generate-custom-ca-certs.sh writes it under
`/var/lib/rancher/k3s/server/tls/` (K3s v1.31-v1.34). K3s uses these files, and
generates nothing of its own, when they exist before the first server start.

| what | as K3s's script makes it |
|---|---|
| root-ca.pem / .key | RSA-4096 (PKCS#1), self-signed, 7300 days, CN `k3s-root-ca@<unix time>`; root-ca.crt is a copy |
| intermediate-ca.pem / .key | RSA-4096, signed by the root, 3700 days; intermediate-ca.crt = intermediate + root |
| client, server, request-header, etcd/peer, etcd/server CAs | EC P-256 (`EC PRIVATE KEY`), signed by the intermediate, 3700 days, CN `k3s-<type>-ca@<time>`; `<type>-ca.crt` = CA + intermediate + root |
| every CA | SKI hash, AKI keyid, basicConstraints critical CA:true without pathlen, keyUsage critical digitalSignature, keyEncipherment, keyCertSign; sha256 |
| service.key | RSA-2048, the service-account signing key |

`/cacerts` then serves `server-ca.crt`, the three-certificate bundle, so the
token's CA hash is the root's SHA-256 fingerprint (see `cahash`).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

LEAF_CAS = ("client", "server", "request-header", "etcd/peer", "etcd/server")
ROOT_DAYS = 7300
CA_DAYS = 3700


@dataclass(frozen=True)
class TlsFile:
    """One file of the layout: its path under `server/tls/`, bytes, and whether it is secret."""

    path: str
    data: bytes
    secret: bool


CaKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class _Ca:
    cert: x509.Certificate
    key: CaKey


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: CaKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _make_ca(name: str, key: CaKey, days: int, issuer: _Ca | None, now: datetime.datetime) -> _Ca:
    """A CA certificate for `key`, signed by `issuer` (self-signed when None)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}@{int(now.timestamp())}")])
    signer = issuer.key if issuer else key
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .sign(signer, hashes.SHA256())
    )
    return _Ca(cert=cert, key=key)


def generate(now: datetime.datetime | None = None) -> list[TlsFile]:
    """Every file of the custom CA layout, paths relative to `server/tls/`."""
    now = now or datetime.datetime.now(datetime.UTC)
    root = _make_ca("k3s-root-ca", rsa.generate_private_key(65537, 4096), ROOT_DAYS, None, now)
    inter = _make_ca(
        "k3s-intermediate-ca", rsa.generate_private_key(65537, 4096), CA_DAYS, root, now
    )
    files = [
        TlsFile("root-ca.pem", _pem(root.cert), False),
        TlsFile("root-ca.crt", _pem(root.cert), False),
        TlsFile("root-ca.key", _key_pem(root.key), True),
        TlsFile("intermediate-ca.pem", _pem(inter.cert), False),
        TlsFile("intermediate-ca.crt", _pem(inter.cert) + _pem(root.cert), False),
        TlsFile("intermediate-ca.key", _key_pem(inter.key), True),
    ]
    for kind in LEAF_CAS:
        name = "k3s-" + kind.replace("/", "-") + "-ca"
        ca = _make_ca(name, ec.generate_private_key(ec.SECP256R1()), CA_DAYS, inter, now)
        bundle = _pem(ca.cert) + _pem(inter.cert) + _pem(root.cert)
        files += [
            TlsFile(f"{kind}-ca.pem", _pem(ca.cert), False),
            TlsFile(f"{kind}-ca.crt", bundle, False),
            TlsFile(f"{kind}-ca.key", _key_pem(ca.key), True),
        ]
    service = rsa.generate_private_key(65537, 2048)
    files.append(TlsFile("service.key", _key_pem(service), True))
    return files
