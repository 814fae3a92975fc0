"""Checks the CA set in `cluster/tls/` before anything uses it (`cluster show`, server images).

Every file of the layout `ca.generate` writes must be there and be what it claims: each
`<name>-ca.pem` one certificate, valid now; each `.key` the private key of that certificate;
each `.crt` the certificate followed by the chain up to the root, in K3s's order; every CA
signed by its issuer (checked by signature: the root by itself, the intermediate by the root,
the leaf CAs by the intermediate); `service.key` a private key. A server image built from a
damaged set would fail on the device, at K3s's first start, where nobody sees it.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from builder.cluster.ca import LEAF_CAS
from builder.util.errors import UserError

# (name, its issuer's name); None: self-signed.
CHAIN: tuple[tuple[str, str | None], ...] = (
    ("root", None),
    ("intermediate", "root"),
    *((kind, "intermediate") for kind in LEAF_CAS),
)


def layout_names() -> list[str]:
    """Every file name of the layout, relative to `tls/`."""
    names = [f"{name}-ca.{suffix}" for name, _ in CHAIN for suffix in ("pem", "crt", "key")]
    return [*names, "service.key"]


def check_layout(files: dict[str, bytes], tls: Path) -> None:
    """Raise a one-line UserError naming the first file of `tls/` that is missing or wrong."""
    for name in layout_names():
        if name not in files:
            raise _damaged(tls, name, "is missing")
    certs: dict[str, x509.Certificate] = {}
    for name, issuer in CHAIN:
        cert = _one_cert(files, tls, f"{name}-ca.pem")
        signer = cert if issuer is None else certs[issuer]
        if not _signed_by(cert, signer):
            what = "itself" if issuer is None else f"the {issuer} CA"
            raise _damaged(tls, f"{name}-ca.pem", f"is not signed by {what}")
        certs[name] = cert
        _check_key(files, tls, f"{name}-ca.key", cert)
        chain = [cert, *_issuers(name, certs)]
        _check_bundle(files, tls, f"{name}-ca.crt", chain)
    _load_key(files, tls, "service.key")


def check_token(path: Path, ca_hash: str) -> None:
    """`path` holds one line `K10<ca_hash>::...`: a token that pins this CA set (never shown)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(
            f"{path}: missing from the cluster (made by `pifleet cluster init`)"
        ) from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    text = data.decode("utf-8", errors="replace").strip()
    if not text.startswith(f"K10{ca_hash}::") or not text.isprintable():
        raise UserError(
            f"{path}: is not one line K10<CA hash>::... pinning this cluster's CA set (hash"
            f" {ca_hash}); the cluster is damaged (restore cluster/ from its backup)"
        )


def _issuers(name: str, certs: dict[str, x509.Certificate]) -> list[x509.Certificate]:
    """The certificates above `name`, nearest first."""
    issuer = dict(CHAIN)[name]
    out = []
    while issuer is not None:
        out.append(certs[issuer])
        issuer = dict(CHAIN)[issuer]
    return out


def _one_cert(files: dict[str, bytes], tls: Path, name: str) -> x509.Certificate:
    certs = _certs(files, tls, name)
    if len(certs) != 1:
        raise _damaged(tls, name, f"holds {len(certs)} certificates, not one")
    now = datetime.datetime.now(datetime.UTC)
    cert = certs[0]
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        until = cert.not_valid_after_utc.strftime("%Y-%m-%d")
        raise _damaged(tls, name, f"is not valid now (valid until {until})")
    return cert


def _certs(files: dict[str, bytes], tls: Path, name: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(files[name])
    except ValueError:
        raise _damaged(tls, name, "holds no PEM certificate") from None


def _check_bundle(
    files: dict[str, bytes], tls: Path, name: str, chain: list[x509.Certificate]
) -> None:
    if _certs(files, tls, name) != chain:
        names = " + ".join(c.subject.rfc4514_string() for c in chain)
        raise _damaged(tls, name, f"is not the CA followed by its chain ({names})")


def _load_key(files: dict[str, bytes], tls: Path, name: str) -> object:
    try:
        return serialization.load_pem_private_key(files[name], password=None)
    except (ValueError, TypeError):
        raise _damaged(tls, name, "holds no unencrypted PEM private key") from None


def _check_key(files: dict[str, bytes], tls: Path, name: str, cert: x509.Certificate) -> None:
    key = _load_key(files, tls, name)
    public = getattr(key, "public_key", None)
    pem = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if public is None or public().public_bytes(*pem) != cert.public_key().public_bytes(*pem):
        raise _damaged(tls, name, f"is not the key of {name.removesuffix('.key')}.pem")


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _damaged(tls: Path, name: str, problem: str) -> UserError:
    return UserError(
        f"{tls / name}: {problem}; the cluster's CA set is damaged"
        " (restore cluster/ from its backup; a new `cluster init` makes a new cluster)"
    )
