"""The CA hash in a `K10<hash>::…` token, computed as K3s computes it from `/cacerts`.

| rule | K3s source |
|---|---|
| exactly one certificate: sha256 of the whole `/cacerts` body, PEM text and newline included | pkg/clientaccess/token.go: hashCA |
| several: certs after the first are roots when their AuthorityKeyId is empty or equals their SubjectKeyId, intermediates otherwise | token.go: hashCA |
| several, and the first chains to a root (signatures, validity now): sha256 of that root's DER | token.go: hashCA (x509 Verify, last cert of the first chain) |
| several that do not chain, or a body that does not parse: sha256 of the whole body | token.go: hashCA (falls back to the body digest) |
| `/cacerts` serves `server/tls/server-ca.crt` byte for byte | pkg/server/handlers/handlers.go: CACerts |
"""

from __future__ import annotations

import datetime
import hashlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding


def k3s_ca_hash(cacerts: bytes) -> str:
    """The lowercase hex hash K3s puts in a token for a server whose `/cacerts` is `cacerts`."""
    try:
        certs = x509.load_pem_x509_certificates(cacerts)
    except ValueError:
        return hashlib.sha256(cacerts).hexdigest()
    if len(certs) > 1:
        root = _chain_root(certs[0], certs[1:])
        if root is not None:
            return hashlib.sha256(root.public_bytes(Encoding.DER)).hexdigest()
    return hashlib.sha256(cacerts).hexdigest()


def _key_id(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> bytes | None:
    try:
        value = cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    if isinstance(value, x509.SubjectKeyIdentifier):
        return value.digest
    if isinstance(value, x509.AuthorityKeyIdentifier):
        return value.key_identifier
    return None


def _is_root(cert: x509.Certificate) -> bool:
    authority = _key_id(cert, x509.AuthorityKeyIdentifier)
    return not authority or authority == _key_id(cert, x509.SubjectKeyIdentifier)


def _valid_now(cert: x509.Certificate) -> bool:
    now = datetime.datetime.now(datetime.UTC)
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _issued(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _chain_root(leaf: x509.Certificate, others: list[x509.Certificate]) -> x509.Certificate | None:
    """The root `leaf` chains to through `others`, or None (a depth-first walk, like Verify)."""
    roots = [c for c in others if _is_root(c)]
    intermediates = [c for c in others if not _is_root(c)]

    def walk(cert: x509.Certificate, seen: int) -> x509.Certificate | None:
        if not _valid_now(cert) or seen > len(others):
            return None
        for root in roots:
            if _valid_now(root) and _issued(cert, root):
                return root
        for step in intermediates:
            if step is not cert and _issued(cert, step):
                found = walk(step, seen + 1)
                if found is not None:
                    return found
        return None

    return walk(leaf, 0)
