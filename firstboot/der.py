"""A small DER reader for X.509 certificates, standard library only (ITU-T X.690).

Only what pinning a CA needs: elements, their children, OIDs, INTEGERs, BIT STRINGs and
AlgorithmIdentifiers. Every malformed input raises DERError, never IndexError.
"""

from __future__ import annotations

from typing import List, NamedTuple, Tuple


class DERError(ValueError):
    pass


def tlv(data: bytes, pos: int) -> Tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at `pos`."""
    if pos + 2 > len(data):
        raise DERError("truncated DER")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise DERError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise DERError("truncated DER")
    return tag, pos, pos + length


def children(data: bytes, start: int, end: int) -> List[Tuple[int, int, int, int]]:
    """(tag, element start, value start, value end) of each element in data[start:end]."""
    found = []
    while start < end:
        tag, vstart, vend = tlv(data, start)
        found.append((tag, start, vstart, vend))
        start = vend
    return found


def oid(der: bytes) -> str:
    """Dotted form of a DER OBJECT IDENTIFIER element."""
    tag, start, end = tlv(der, 0)
    if tag != 0x06 or start == end:
        raise DERError("not an OID")
    body = der[start:end]
    parts = [min(body[0] // 40, 2), body[0] - 40 * min(body[0] // 40, 2)]
    value = 0
    for byte in body[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return ".".join(str(p) for p in parts)


class Algorithm(NamedTuple):
    oid: str
    params: bytes  # the DER element after the OID, or b''


def algorithm(der: bytes) -> Algorithm:
    """An AlgorithmIdentifier SEQUENCE { OID, parameters OPTIONAL }."""
    tag, start, end = tlv(der, 0)
    parts = children(der, start, end)
    if tag != 0x30 or not parts:
        raise DERError("bad AlgorithmIdentifier")
    params = der[parts[1][1] : parts[1][3]] if len(parts) > 1 else b""
    return Algorithm(oid(der[parts[0][1] : parts[0][3]]), params)


def integers(der: bytes) -> List[int]:
    tag, start, end = tlv(der, 0)
    if tag != 0x30:
        raise DERError("expected a SEQUENCE of INTEGERs")
    values = []
    for itag, _s, vstart, vend in children(der, start, end):
        if itag != 0x02:
            raise DERError("expected an INTEGER")
        values.append(int.from_bytes(der[vstart:vend], "big", signed=True))
    return values


def bit_string(der: bytes) -> bytes:
    tag, start, end = tlv(der, 0)
    if tag != 0x03 or start == end or der[start] != 0:
        raise DERError("bad BIT STRING")
    return der[start + 1 : end]
