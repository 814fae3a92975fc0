"""Certificate signature checks, standard library only: does `issuer`'s key sign `child`?

The device half cannot rely on the `cryptography` package, and Python's `ssl` module checks
signatures only inside a TLS handshake. Pinning a CA bundle needs more: every certificate in
`/cacerts` must be proven to chain, by signature, to the one root the token pins
(firstboot/x509.py). These are the signature schemes Go's crypto/x509 accepts for
certificates (x509.go: signatureAlgorithmDetails, checkSignature), which is what K3s links:

| OID                       | scheme                            | notes                               |
|---------------------------|-----------------------------------|-------------------------------------|
| 1.2.840.10045.4.3.2/3/4   | ECDSA with SHA-256/384/512        | P-256 (K3s's own CAs), P-384, P-521 |
| 1.2.840.113549.1.1.11/12/13 | RSA PKCS #1 v1.5 SHA-256/384/512 | custom CAs (generate-custom-ca-certs) |
| 1.2.840.113549.1.1.10     | RSASSA-PSS, MGF1, SHA-256/384/512 | salt length as the parameters say   |
| 1.3.101.112               | Ed25519                           | RFC 8032 verification               |
| SHA-1 and MD5 schemes     | refused                           | Go >= 1.18 refuses them too         |

Everything here is public data (certificates and signatures), so nothing needs constant time.
"""

from __future__ import annotations

import hashlib
from typing import Dict, Tuple

from firstboot.der import DERError, algorithm, bit_string, children, integers, tlv
from firstboot.ecsig import Verifier, ecdsa, ed25519

SignatureError = DERError  # the scheme, key or encoding cannot be used (the message says which)


# --- hashes ----------------------------------------------------------------------------------

HASHES: Dict[str, str] = {
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}
DIGEST_INFO = {  # DER DigestInfo prefix of EMSA-PKCS1-v1_5 (RFC 8017 section 9.2, note 1)
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
INSECURE = {
    "1.2.840.113549.1.1.4": "MD5 with RSA",
    "1.2.840.113549.1.1.5": "SHA-1 with RSA",
    "1.2.840.10045.4.1": "ECDSA with SHA-1",
    "1.2.840.10040.4.3": "DSA with SHA-1",
}


# --- RSA -------------------------------------------------------------------------------------


def _rsa_key(key: bytes) -> Tuple[int, int]:
    numbers = integers(key)
    if len(numbers) != 2 or numbers[0] <= 0 or numbers[1] <= 1:
        raise SignatureError("bad RSA public key")
    if numbers[0].bit_length() < 1024:
        raise SignatureError("RSA key shorter than 1024 bits")
    return numbers[0], numbers[1]


def _rsa_open(key: bytes, signature: bytes) -> Tuple[bytes, int]:
    """The encoded message s^e mod n, and the modulus length in bits."""
    n, e = _rsa_key(key)
    k = (n.bit_length() + 7) // 8
    s = int.from_bytes(signature, "big")
    if len(signature) != k or s >= n:
        return b"", n.bit_length()
    return pow(s, e, n).to_bytes(k, "big"), n.bit_length()


def _pkcs1v15(hash_name: str) -> Verifier:
    def verify(key: bytes, _params: bytes, message: bytes, signature: bytes) -> bool:
        em, _bits = _rsa_open(key, signature)
        digest = DIGEST_INFO[hash_name] + hashlib.new(hash_name, message).digest()
        padding = len(em) - len(digest) - 3
        return padding >= 8 and em == b"\x00\x01" + b"\xff" * padding + b"\x00" + digest

    return verify


def _mgf1(hash_name: str, seed: bytes, length: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.new(hash_name, seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:length]


def _pss_params(params: bytes) -> Tuple[str, int]:
    """(hash, salt length) from RSASSA-PSS-params; SHA-1 defaults are refused."""
    hash_name, mgf_hash, salt = "", "", 20
    tag, start, end = tlv(params, 0)
    for ptag, _s, vstart, vend in children(params, start, end):
        inner = params[vstart:vend]
        if ptag == 0xA0:
            hash_name = HASHES.get(algorithm(inner).oid, "")
        elif ptag == 0xA1:
            mgf = algorithm(inner)
            if mgf.oid != "1.2.840.113549.1.1.8" or not mgf.params:
                raise SignatureError("RSASSA-PSS with a mask function other than MGF1")
            mgf_hash = HASHES.get(algorithm(mgf.params).oid, "")
        elif ptag == 0xA2:
            itag, istart, iend = tlv(inner, 0)
            salt = int.from_bytes(inner[istart:iend], "big", signed=True) if itag == 2 else -1
    if tag != 0x30 or not hash_name or mgf_hash != hash_name or salt < 0:
        raise SignatureError("RSASSA-PSS parameters other than SHA-2 with MGF1 of the same hash")
    return hash_name, salt


def _pss(key: bytes, params: bytes, message: bytes, signature: bytes) -> bool:
    """EMSA-PSS-VERIFY (RFC 8017 section 9.1.2)."""
    hash_name, salt_length = _pss_params(params)
    em, bits = _rsa_open(key, signature)
    em_bits = bits - 1
    extra = len(em) - (em_bits + 7) // 8
    if any(em[:extra]):
        return False
    em = em[extra:]
    h_len = hashlib.new(hash_name).digest_size
    if not em or len(em) < h_len + salt_length + 2 or em[-1] != 0xBC:
        return False
    masked, h = em[: len(em) - h_len - 1], em[len(em) - h_len - 1 : -1]
    top_bits = 8 * len(em) - em_bits
    if masked[0] & (0xFF << (8 - top_bits)) & 0xFF:
        return False
    mask = _mgf1(hash_name, h, len(masked))
    db = bytearray(
        (int.from_bytes(masked, "big") ^ int.from_bytes(mask, "big")).to_bytes(len(mask), "big")
    )
    if top_bits:
        db[0] &= 0xFF >> top_bits
    zeros = len(db) - salt_length - 1
    if any(db[:zeros]) or db[zeros] != 1:
        return False
    salt = bytes(db[zeros + 1 :])
    m_hash = hashlib.new(hash_name, message).digest()
    return hashlib.new(hash_name, b"\x00" * 8 + m_hash + salt).digest() == h


# --- dispatch --------------------------------------------------------------------------------

RSA_KEY, EC_KEY, ED25519_KEY = "1.2.840.113549.1.1.1", "1.2.840.10045.2.1", "1.3.101.112"
SCHEMES: Dict[str, Tuple[str, Verifier]] = {
    "1.2.840.10045.4.3.2": (EC_KEY, ecdsa("sha256")),
    "1.2.840.10045.4.3.3": (EC_KEY, ecdsa("sha384")),
    "1.2.840.10045.4.3.4": (EC_KEY, ecdsa("sha512")),
    "1.2.840.113549.1.1.11": (RSA_KEY, _pkcs1v15("sha256")),
    "1.2.840.113549.1.1.12": (RSA_KEY, _pkcs1v15("sha384")),
    "1.2.840.113549.1.1.13": (RSA_KEY, _pkcs1v15("sha512")),
    "1.2.840.113549.1.1.10": (RSA_KEY, _pss),
    "1.3.101.112": (ED25519_KEY, ed25519),
}


def verify(spki: bytes, signature_algorithm: bytes, message: bytes, signature: bytes) -> bool:
    """Whether `signature` (the BIT STRING's bytes) over `message` verifies under the
    SubjectPublicKeyInfo `spki` with `signature_algorithm` (both DER). SignatureError for a
    scheme or key this module (like Go) does not accept."""
    scheme = algorithm(signature_algorithm)
    if scheme.oid in INSECURE:
        raise SignatureError("insecure signature algorithm " + INSECURE[scheme.oid])
    if scheme.oid not in SCHEMES:
        raise SignatureError("unsupported signature algorithm " + scheme.oid)
    key_type, check = SCHEMES[scheme.oid]
    tag, start, end = tlv(spki, 0)
    parts = children(spki, start, end)
    if tag != 0x30 or len(parts) != 2:
        raise SignatureError("bad SubjectPublicKeyInfo")
    key_algorithm = algorithm(spki[parts[0][1] : parts[0][3]])
    if key_algorithm.oid != key_type:
        return False  # e.g. an ECDSA signature checked against an RSA key: not its issuer
    key = bit_string(spki[parts[1][1] : parts[1][3]])
    params = key_algorithm.params if key_type == EC_KEY else scheme.params
    return check(key, params, message, signature)
