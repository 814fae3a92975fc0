"""The K3s CA pin, standard library only: the hash K3s computes for `/cacerts`, and exactly
which certificates that hash proves.

| rule | source |
|---|---|
| one certificate: the hash is sha256 of the whole `/cacerts` body | k3s pkg/clientaccess/token.go: hashCA |
| several: later certificates whose AuthorityKeyId is empty or equals their SubjectKeyId are roots, the others intermediates | token.go: hashCA |
| several: the hash is sha256 of the DER of the root the FIRST certificate chains to | token.go: hashCA (`certs[0].Verify`, last certificate of the first chain) |
| a chain link is a parent named as the child's issuer whose key verifies the child's signature; names alone prove nothing | go crypto/x509 verify.go: buildChains, CheckSignatureFrom |
| an intermediate in a chain must be a CA (basicConstraints cA) | go crypto/x509 verify.go: isValid |
| several that do not chain (or a block that does not parse): sha256 of the whole body | token.go: hashCA |
| validity times are not judged here | on purpose: a device clock that is wrong would turn into a false "CA mismatch" (k3s hashCA falls back to the body hash); the TLS handshake judges the time, and the agent can take it from the pinned server |

What the pin then trusts (pifleet's rule, stricter than K3s, whose GetHTTPClient trusts every
certificate of `/cacerts`):
- a body hash pins every byte of the body, so every certificate in it is the server's own;
- a root hash proves ONE certificate, the root. It is the only trust anchor. Every other
  certificate in the bundle must verify up to it by signature; a bundle holding one that does
  not is refused (`Pinned.problem`), because an attacker who knows the public root can add a
  certificate named like it, or like an intermediate, but cannot sign one with its key;
- at most MAX_CERTS certificates, so that a hostile bundle cannot make the device spend
  minutes on signature checks.
"""

from __future__ import annotations

import calendar
import hashlib
import re
import ssl
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from firstboot import sigverify
from firstboot.der import DERError, bit_string, children, tlv

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.S)
_SKI = bytes.fromhex("0603551d0e")  # OID 2.5.29.14
_AKI = bytes.fromhex("0603551d23")  # OID 2.5.29.35
_BASIC = bytes.fromhex("0603551d13")  # OID 2.5.29.19
_CN = bytes.fromhex("0603550403")  # OID 2.5.4.3
MAX_CERTS = 16  # K3s bundles hold 1-3 (custom CA: server-ca, intermediate, root)

CertError = DERError


class Cert(NamedTuple):
    pem: bytes
    der: bytes
    issuer: bytes
    subject: bytes
    ski: bytes
    aki: bytes
    is_ca: bool
    tbs: bytes  # the signed tbsCertificate element
    signature_algorithm: bytes
    signature: bytes
    spki: bytes

    def signs(self, child: "Cert") -> bool:
        """Whether this certificate's key verifies `child`'s signature (and names it)."""
        if child.issuer != self.subject:
            return False
        try:
            return sigverify.verify(
                self.spki, child.signature_algorithm, child.tbs, child.signature
            )
        except DERError:
            return False

    def name(self) -> str:
        """The subject's common name, for messages (printable ASCII only)."""
        at = self.subject.find(_CN)
        if at < 0:
            return "(no CN)"
        try:
            _tag, start, end = tlv(self.subject, at + len(_CN))
        except DERError:
            return "(no CN)"
        text = self.subject[start:end].decode("latin-1")
        return "CN=" + "".join(c if " " <= c <= "~" else "?" for c in text)[:64]


def _extension(tbs: bytes, start: int, end: int, oid: bytes) -> bytes:
    """The value (inside its OCTET STRING) of extension `oid`, or b''."""
    for _tag, _s, vstart, vend in children(tbs, start, end):
        parts = children(tbs, vstart, vend)
        if parts and tbs[parts[0][1] : parts[0][3]] == oid:
            _t, _os, ostart, oend = parts[-1]
            return tbs[ostart:oend]
    return b""


def _inner(value: bytes) -> bytes:
    _tag, start, end = tlv(value, 0)
    return value[start:end]


def _aki_keyid(value: bytes) -> bytes:
    _tag, start, end = tlv(value, 0)  # AuthorityKeyIdentifier SEQUENCE
    for tag, _s, vstart, vend in children(value, start, end):
        if tag == 0x80:  # [0] IMPLICIT keyIdentifier
            return value[vstart:vend]
    return b""


def _is_ca(value: bytes) -> bool:
    _tag, start, end = tlv(value, 0)  # BasicConstraints SEQUENCE { cA BOOLEAN DEFAULT FALSE, ...}
    parts = children(value, start, end)
    return bool(parts) and parts[0][0] == 0x01 and value[parts[0][2] : parts[0][3]] != b"\x00"


def parse(pem: bytes) -> Cert:
    try:
        der = ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise CertError("not a PEM certificate") from None
    _tag, cstart, cend = tlv(der, 0)
    outer = children(der, cstart, cend)  # tbsCertificate, signatureAlgorithm, signatureValue
    if len(outer) != 3:
        raise CertError("not an X.509 certificate")
    _tag, tstart, tend = tlv(der, cstart)
    fields = children(der, tstart, tend)
    if fields and fields[0][0] == 0xA0:  # [0] version
        fields = fields[1:]
    if len(fields) < 6:
        raise CertError("not an X.509 certificate")
    ski = aki = b""
    is_ca = False
    for tag, _s, vstart, _vend in fields[6:]:
        if tag == 0xA3:  # [3] extensions: SEQUENCE OF Extension
            _t, estart, eend = tlv(der, vstart)
            ski_value = _extension(der, estart, eend, _SKI)
            ski = _inner(ski_value) if ski_value else b""  # an OCTET STRING
            aki_value = _extension(der, estart, eend, _AKI)
            aki = _aki_keyid(aki_value) if aki_value else b""
            basic = _extension(der, estart, eend, _BASIC)
            is_ca = _is_ca(basic) if basic else False
    return Cert(
        pem=pem,
        der=der,
        issuer=der[fields[2][1] : fields[2][3]],
        subject=der[fields[4][1] : fields[4][3]],
        ski=ski,
        aki=aki,
        is_ca=is_ca,
        tbs=der[outer[0][1] : outer[0][3]],
        signature_algorithm=der[outer[1][1] : outer[1][3]],
        signature=bit_string(der[outer[2][1] : outer[2][3]]),
        spki=der[fields[5][1] : fields[5][3]],
    )


def split(body: bytes) -> List[bytes]:
    return [m.group(0) + b"\n" for m in _PEM.finditer(body)]


class Pinned(NamedTuple):
    """What one `/cacerts` body pins."""

    ca_hash: str  # the hash K3s computes for it
    trust: bytes  # PEM of the TLS trust store
    partial_chain: bool  # every certificate of `trust` is an anchor (else only self-signed ones)
    problem: str  # "" or one line: why this bundle must not be trusted


def _body(body: bytes, certs: List[Cert], problem: str = "") -> Pinned:
    trust = b"".join(c.pem for c in certs)
    return Pinned(hashlib.sha256(body).hexdigest(), trust, True, problem)


def _root_of(first: Cert, later: List[Cert], signs: Callable[[Cert, Cert], bool]) -> Optional[Cert]:
    """The root `first` chains to by signature, as hashCA's Verify finds it: at each step the
    roots first, then the CA intermediates in bundle order (depth first, each certificate once)."""
    roots = [c for c in later if not c.aki or c.aki == c.ski]
    intermediates = [c for c in later if c not in roots]
    seen: List[Cert] = []

    def walk(cert: Cert) -> Optional[Cert]:
        for root in roots:
            if signs(root, cert):
                return root
        for step in intermediates:
            if step.is_ca and step not in seen and signs(step, cert):
                seen.append(step)
                found = walk(step)
                if found is not None:
                    return found
        return None

    return walk(first)


def _unproven(certs: List[Cert], root: Cert, signs: Callable[[Cert, Cert], bool]) -> List[int]:
    """Indexes of the certificates that do not verify up to `root` through the bundle."""
    proven = [root]
    pending = [i for i, c in enumerate(certs) if c.der != root.der]
    grew = True
    while grew and pending:
        grew = False
        for i in list(pending):
            if any((p is root or p.is_ca) and signs(p, certs[i]) for p in proven):
                proven.append(certs[i])
                pending.remove(i)
                grew = True
    return pending


def pin(body: bytes) -> Pinned:
    """The hash K3s computes for `body` and what that hash proves (module doc)."""
    blocks = split(body)
    try:
        certs = [parse(pem) for pem in blocks]
    except CertError:
        return _body(body, [], "the server's CA bundle holds a block that is not a certificate")
    if not certs:
        return _body(body, [], "the server's CA bundle holds no PEM certificate")
    if len(certs) > MAX_CERTS:
        return _body(
            body,
            [],
            f"the server's CA bundle holds {len(certs)} certificates (at most {MAX_CERTS})",
        )
    if len(certs) < 2:
        return _body(body, certs)
    memo: Dict[Tuple[int, int], bool] = {}

    def signs(parent: Cert, child: Cert) -> bool:
        key = (id(parent), id(child))
        if key not in memo:
            memo[key] = parent.signs(child)
        return memo[key]

    root = _root_of(certs[0], certs[1:], signs)
    if root is None:
        return _body(body, certs)  # the hash covers every byte: all of it is pinned
    ca_hash = hashlib.sha256(root.der).hexdigest()
    stray = _unproven(certs, root, signs)
    problem = ""
    if stray:
        problem = (
            f"the server's CA bundle holds a certificate that does not chain to its root by "
            f"signature (#{stray[0] + 1} of {len(certs)}, {certs[stray[0]].name()})"
        )
    if not signs(root, root):  # a root that is not self-signed anchors only on its own
        return Pinned(ca_hash, root.pem, True, problem)
    # A self-signed root is the one anchor (no partial chains), and the intermediates it proved
    # are in the store so that a server sending only its leaf still verifies, as with K3s.
    proven = [c.pem for i, c in enumerate(certs) if c.der != root.der and i not in stray]
    return Pinned(ca_hash, root.pem + b"".join(proven), False, problem)


def hash_ca(body: bytes) -> Tuple[str, bytes]:
    """(hash K3s computes, the PEM certificates the pin trusts) for a /cacerts body."""
    found = pin(body)
    return found.ca_hash, found.trust


def not_before(cert: Cert) -> float:
    """The certificate's notBefore as a Unix time (UTCTime or GeneralizedTime, RFC 5280)."""
    tbs = cert.tbs
    _tag, start, end = tlv(tbs, 0)
    fields = children(tbs, start, end)
    if fields and fields[0][0] == 0xA0:  # [0] version
        fields = fields[1:]
    _tag, _header, vstart, vend = fields[3]  # validity SEQUENCE { notBefore, notAfter }
    tag, _h, tstart, tend = children(tbs, vstart, vend)[0]
    text = tbs[tstart:tend].decode("ascii", "replace").rstrip("Z")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSS: 50-99 are 19xx
        text = ("19" if int(text[:2]) >= 50 else "20") + text
    try:
        return float(calendar.timegm(time.strptime(text[:14], "%Y%m%d%H%M%S")))
    except ValueError:
        raise CertError("a certificate's notBefore is not a time") from None
