"""The CA hash exactly as K3s computes it (pkg/clientaccess/token.go:hashCA), standard library only.

  one certificate in /cacerts     sha256 of the whole /cacerts body
  several (custom CA, rotate-ca)  sha256 of the DER of the root the first certificate chains
                                  to; roots are the later certificates whose Authority Key
                                  Identifier is empty or equals their Subject Key Identifier
  several that do not chain       sha256 of the whole body, like K3s

Chaining is decided from the DER fields (issuer == subject, AKI == SKI when both are
present) by a small DER reader; signatures are then checked by OpenSSL during the TLS
handshake, which trusts only the certificates of that chain (server.pinned_context).
"""

from __future__ import annotations

import hashlib
import re
import ssl
from typing import List, NamedTuple, Optional, Tuple

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.S)
_SKI = bytes.fromhex("0603551d0e")  # OID 2.5.29.14
_AKI = bytes.fromhex("0603551d23")  # OID 2.5.29.35


class CertError(ValueError):
    pass


class Cert(NamedTuple):
    pem: bytes
    der: bytes
    issuer: bytes
    subject: bytes
    ski: bytes
    aki: bytes


def _tlv(data: bytes, pos: int) -> Tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at `pos`."""
    if pos + 2 > len(data):
        raise CertError("truncated DER")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise CertError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise CertError("truncated DER")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> List[Tuple[int, int, int, int]]:
    """(tag, element start, value start, value end) of each element in data[start:end]."""
    found = []
    while start < end:
        tag, vstart, vend = _tlv(data, start)
        found.append((tag, start, vstart, vend))
        start = vend
    return found


def _extension(tbs: bytes, start: int, end: int, oid: bytes) -> bytes:
    """The value (inside its OCTET STRING) of extension `oid`, or b''."""
    for _tag, _s, vstart, vend in _children(tbs, start, end):
        parts = _children(tbs, vstart, vend)
        if parts and tbs[parts[0][1] : parts[0][3]] == oid:
            _t, _os, ostart, oend = parts[-1]
            return tbs[ostart:oend]
    return b""


def parse(pem: bytes) -> Cert:
    try:
        der = ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise CertError("not a PEM certificate") from None
    _tag, cstart, _cend = _tlv(der, 0)
    _tag, tstart, tend = _tlv(der, cstart)  # tbsCertificate
    fields = _children(der, tstart, tend)
    if fields and fields[0][0] == 0xA0:  # [0] version
        fields = fields[1:]
    if len(fields) < 6:
        raise CertError("not an X.509 certificate")
    issuer = der[fields[2][1] : fields[2][3]]
    subject = der[fields[4][1] : fields[4][3]]
    ski = aki = b""
    for tag, _s, vstart, _vend in fields[6:]:
        if tag == 0xA3:  # [3] extensions: SEQUENCE OF Extension
            _t, estart, eend = _tlv(der, vstart)
            ski_value = _extension(der, estart, eend, _SKI)
            if ski_value:
                ski = _inner(ski_value)  # SubjectKeyIdentifier is an OCTET STRING
            aki_value = _extension(der, estart, eend, _AKI)
            if aki_value:
                aki = _aki_keyid(aki_value)
    return Cert(pem, der, issuer, subject, ski, aki)


def _inner(value: bytes) -> bytes:
    _tag, start, end = _tlv(value, 0)
    return value[start:end]


def _aki_keyid(value: bytes) -> bytes:
    _tag, start, end = _tlv(value, 0)  # AuthorityKeyIdentifier SEQUENCE
    for tag, _s, vstart, vend in _children(value, start, end):
        if tag == 0x80:  # [0] IMPLICIT keyIdentifier
            return value[vstart:vend]
    return b""


def split(body: bytes) -> List[bytes]:
    return [m.group(0) + b"\n" for m in _PEM.finditer(body)]


def _issued_by(child: Cert, parent: Cert) -> bool:
    if child.issuer != parent.subject:
        return False
    return not (child.aki and parent.ski and child.aki != parent.ski)


def chain(body: bytes) -> Optional[List[Cert]]:
    """certs[0] up to a root among the later certificates, as hashCA builds it; None if none."""
    certs = [parse(pem) for pem in split(body)]
    if len(certs) < 2:
        return None
    roots = [c for c in certs[1:] if not c.aki or c.aki == c.ski]
    intermediates = [c for c in certs[1:] if c not in roots]
    path = [certs[0]]
    while len(path) <= len(certs):
        current = path[-1]
        for root in roots:
            if _issued_by(current, root):
                return [*path, root]
        step = [c for c in intermediates if c not in path and _issued_by(current, c)]
        if not step:
            return None
        path.append(step[0])
    return None


def hash_ca(body: bytes) -> Tuple[str, bytes]:
    """(hash K3s computes, the PEM certificates to trust) for a /cacerts body."""
    try:
        found = chain(body) if len(split(body)) > 1 else None
    except CertError:
        found = None
    if found is None:
        return hashlib.sha256(body).hexdigest(), body
    return hashlib.sha256(found[-1].der).hexdigest(), b"".join(c.pem for c in found)
