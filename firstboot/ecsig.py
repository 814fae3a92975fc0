"""Elliptic-curve signature verification, standard library only: ECDSA on the NIST curves
(FIPS 186-4; curve constants from its appendix D) and Ed25519 (RFC 8032 section 5.1.7).
Used by firstboot/sigverify.py, which parses the certificate and picks the scheme.
"""

from __future__ import annotations

import hashlib
from typing import Callable, NamedTuple, Optional, Tuple

from firstboot.der import DERError, integers, oid

Point = Optional[Tuple[int, int]]
Verifier = Callable[[bytes, bytes, bytes, bytes], bool]


# --- ECDSA -----------------------------------------------------------------------------------


class Curve(NamedTuple):
    p: int
    a: int
    b: int
    n: int
    gx: int
    gy: int


CURVES = {
    "1.2.840.10045.3.1.7": Curve(  # P-256 (FIPS 186-4 D.1.2.3)
        0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF,
        -3,
        0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
        0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
        0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
        0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
    ),
    "1.3.132.0.34": Curve(  # P-384 (D.1.2.4)
        int("FF" * 31 + "FE" + "FF" * 4 + "00" * 8 + "FF" * 4, 16),
        -3,
        int(
            "B3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875A"
            "C656398D8A2ED19D2A85C8EDD3EC2AEF",
            16,
        ),
        int("FF" * 24 + "C7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973", 16),
        int(
            "AA87CA22BE8B05378EB1C71EF320AD746E1D3B628BA79B9859F741E082542A38"
            "5502F25DBF55296C3A545E3872760AB7",
            16,
        ),
        int(
            "3617DE4A96262C6F5D9E98BF9292DC29F8F41DBD289A147CE9DA3113B5F0B8C0"
            "0A60B1CE1D7E819D7A431D7C90EA0E5F",
            16,
        ),
    ),
    "1.3.132.0.35": Curve(  # P-521 (D.1.2.5)
        2**521 - 1,
        -3,
        int(
            "0051953EB9618E1C9A1F929A21A0B68540EEA2DA725B99B315F3B8B489918EF1"
            "09E156193951EC7E937B1652C0BD3BB1BF073573DF883D2C34F1EF451FD46B50"
            "3F00",
            16,
        ),
        int(
            "01FF" + "FFFFFFFF" * 7 + "FFFFFFFA51868783BF2F966B7FCC0148F709A5D0"
            "3BB5C9B8899C47AEBB6FB71E91386409",
            16,
        ),
        int(
            "00C6858E06B70404E9CD9E3ECB662395B4429C648139053FB521F828AF606B4D"
            "3DBAA14B5E77EFE75928FE1DC127A2FFA8DE3348B3C1856A429BF97E7E31C2E5"
            "BD66",
            16,
        ),
        int(
            "011839296A789A3BC0045C8A5FB42C7D1BD998F54449579B446817AFBD17273E"
            "662C97EE72995EF42640C550B9013FAD0761353C7086A272C24088BE94769FD1"
            "6650",
            16,
        ),
    ),
}

Jacobian = Tuple[int, int, int]


def _double(c: Curve, pt: Jacobian) -> Jacobian:
    x, y, z = pt
    if not y or not z:
        return (0, 1, 0)
    p = c.p
    ysq = y * y % p
    s = 4 * x * ysq % p
    zsq = z * z % p
    m = (3 * x * x + c.a * zsq * zsq) % p
    nx = (m * m - 2 * s) % p
    return nx, (m * (s - nx) - 8 * ysq * ysq) % p, 2 * y * z % p


def _add(c: Curve, one: Jacobian, two: Jacobian) -> Jacobian:
    if not one[2]:
        return two
    if not two[2]:
        return one
    p = c.p
    z1sq, z2sq = one[2] * one[2] % p, two[2] * two[2] % p
    u1, u2 = one[0] * z2sq % p, two[0] * z1sq % p
    s1, s2 = one[1] * z2sq * two[2] % p, two[1] * z1sq * one[2] % p
    if u1 == u2:
        return _double(c, one) if s1 == s2 else (0, 1, 0)
    h, r = (u2 - u1) % p, (s2 - s1) % p
    h2 = h * h % p
    h3 = h * h2 % p
    nx = (r * r - h3 - 2 * u1 * h2) % p
    ny = (r * (u1 * h2 - nx) - s1 * h3) % p
    return nx, ny, h * one[2] * two[2] % p


def _twin_multiply(c: Curve, k1: int, q1: Jacobian, k2: int, q2: Jacobian) -> Point:
    """k1*q1 + k2*q2 in affine coordinates (Shamir's trick), None for infinity."""
    both = _add(c, q1, q2)
    acc: Jacobian = (0, 1, 0)
    for bit in range(max(k1.bit_length(), k2.bit_length()) - 1, -1, -1):
        acc = _double(c, acc)
        pick = ((k1 >> bit) & 1, (k2 >> bit) & 1)
        if pick == (1, 1):
            acc = _add(c, acc, both)
        elif pick == (1, 0):
            acc = _add(c, acc, q1)
        elif pick == (0, 1):
            acc = _add(c, acc, q2)
    if not acc[2]:
        return None
    zinv = pow(acc[2], -1, c.p)
    return acc[0] * zinv * zinv % c.p, acc[1] * zinv * zinv * zinv % c.p


def _ec_point(c: Curve, key: bytes) -> Tuple[int, int]:
    size = (c.p.bit_length() + 7) // 8
    if len(key) == 1 + 2 * size and key[0] == 4:
        x, y = int.from_bytes(key[1 : 1 + size], "big"), int.from_bytes(key[1 + size :], "big")
    elif len(key) == 1 + size and key[0] in (2, 3):
        x = int.from_bytes(key[1:], "big")
        y = pow((x * x * x + c.a * x + c.b) % c.p, (c.p + 1) // 4, c.p)  # p = 3 mod 4
        if y & 1 != key[0] & 1:
            y = c.p - y
    else:
        raise DERError("bad EC public key")
    if x >= c.p or y >= c.p or (y * y - x * x * x - c.a * x - c.b) % c.p:
        raise DERError("EC public key is not on its curve")
    return x, y


def ecdsa(hash_name: str) -> Verifier:
    def verify(key: bytes, curve_oid: bytes, message: bytes, signature: bytes) -> bool:
        curve = CURVES.get(oid(curve_oid) if curve_oid else "")
        if curve is None:
            raise DERError("ECDSA on a curve other than P-256, P-384 or P-521")
        qx, qy = _ec_point(curve, key)
        try:
            r, s = integers(signature)
        except (DERError, ValueError):
            return False
        if not (0 < r < curve.n and 0 < s < curve.n):
            return False
        digest = hashlib.new(hash_name, message).digest()
        e = int.from_bytes(digest, "big")
        excess = 8 * len(digest) - curve.n.bit_length()
        if excess > 0:
            e >>= excess
        w = pow(s, -1, curve.n)
        found = _twin_multiply(
            curve, e * w % curve.n, (curve.gx, curve.gy, 1), r * w % curve.n, (qx, qy, 1)
        )
        return found is not None and found[0] % curve.n == r

    return verify


# --- Ed25519 (RFC 8032 section 5.1.7) -------------------------------------------------------

_P25519 = 2**255 - 19
_L25519 = 2**252 + 27742317777372353535851937790883648493
_D25519 = -121665 * pow(121666, _P25519 - 2, _P25519) % _P25519
_I25519 = pow(2, (_P25519 - 1) // 4, _P25519)


def _ed_add(one: Tuple[int, ...], two: Tuple[int, ...]) -> Tuple[int, ...]:
    p = _P25519
    a = (one[1] - one[0]) * (two[1] - two[0]) % p
    b = (one[1] + one[0]) * (two[1] + two[0]) % p
    c = 2 * one[3] * two[3] * _D25519 % p
    d = 2 * one[2] * two[2] % p
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % p, g * h % p, f * g % p, e * h % p


def _ed_multiply(k: int, pt: Tuple[int, ...]) -> Tuple[int, ...]:
    acc: Tuple[int, ...] = (0, 1, 1, 0)
    while k:
        if k & 1:
            acc = _ed_add(acc, pt)
        pt = _ed_add(pt, pt)
        k >>= 1
    return acc


def _ed_decode(data: bytes) -> Tuple[int, ...]:
    p = _P25519
    y = int.from_bytes(data, "little") & ((1 << 255) - 1)
    if len(data) != 32 or y >= p:
        raise DERError("bad Ed25519 point")
    xx = (y * y - 1) * pow(_D25519 * y * y + 1, p - 2, p) % p
    x = pow(xx, (p + 3) // 8, p)
    if (x * x - xx) % p:
        x = x * _I25519 % p
    if (x * x - xx) % p or (x == 0 and data[31] >> 7):
        raise DERError("bad Ed25519 point")
    if x & 1 != data[31] >> 7:
        x = p - x
    return x, y, 1, x * y % p


def _ed_equal(one: Tuple[int, ...], two: Tuple[int, ...]) -> bool:
    p = _P25519
    return (one[0] * two[2] - two[0] * one[2]) % p == 0 and (
        one[1] * two[2] - two[1] * one[2]
    ) % p == 0


def ed25519(key: bytes, _params: bytes, message: bytes, signature: bytes) -> bool:
    point = _ed_decode(key)
    if len(signature) != 64:
        return False
    try:
        r_point = _ed_decode(signature[:32])
    except DERError:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= _L25519:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + key + message).digest(), "little")
    gy = 4 * pow(5, _P25519 - 2, _P25519) % _P25519
    base = _ed_decode(gy.to_bytes(32, "little"))
    return _ed_equal(_ed_multiply(s, base), _ed_add(r_point, _ed_multiply(h % _L25519, point)))
