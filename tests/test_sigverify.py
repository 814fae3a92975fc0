"""The device's standard-library signature checks (firstboot/sigverify.py, firstboot/ecsig.py)
agree with OpenSSL (through `cryptography`) on every scheme Go's crypto/x509 accepts, and
refuse what it refuses."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from firstboot import sigverify
from firstboot import x509 as pin_x509

NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signer")])
KEYS = {
    "P-256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "P-384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "P-521": lambda: ec.generate_private_key(ec.SECP521R1()),
    "RSA-2048": lambda: rsa.generate_private_key(65537, 2048),
    "RSA-3072": lambda: rsa.generate_private_key(65537, 3072),
    "Ed25519": ed25519.Ed25519PrivateKey.generate,
}
SCHEMES = [
    (key, digest, pss)
    for key in KEYS
    for digest in ([None] if key == "Ed25519" else ["SHA256", "SHA384", "SHA512"])
    for pss in ([False, True] if key.startswith("RSA") else [False])
]


def _signed(key: CertificateIssuerPrivateKeyTypes, digest: str | None, pss: bool) -> pin_x509.Cert:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(NAME).issuer_name(NAME)
        .public_key(key.public_key()).serial_number(7)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
    )  # fmt: skip
    algorithm = getattr(hashes, digest)() if digest else None
    extra = {}
    if pss and algorithm is not None:
        extra["rsa_padding"] = padding.PSS(padding.MGF1(algorithm), padding.PSS.DIGEST_LENGTH)
    cert = builder.sign(key, algorithm, **extra)  # type: ignore[arg-type]
    return pin_x509.parse(cert.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize(("key", "digest", "pss"), SCHEMES)
def test_a_good_signature_verifies_and_any_change_does_not(
    key: str, digest: str | None, pss: bool
) -> None:
    cert = _signed(KEYS[key](), digest, pss)
    assert cert.signs(cert)
    flipped = bytes([cert.signature[-1] ^ 1])
    assert not cert.signs(cert._replace(signature=cert.signature[:-1] + flipped))
    assert not cert.signs(cert._replace(tbs=cert.tbs[:-1] + bytes([cert.tbs[-1] ^ 1])))
    other = _signed(KEYS[key](), digest, pss)  # same name, another key
    assert not other.signs(cert) and not cert.signs(other)


def test_sha1_and_unknown_schemes_are_refused() -> None:
    good = _signed(KEYS["RSA-2048"](), "SHA256", False)
    sha1_rsa = bytes.fromhex("300d06092a864886f70d0101050500")  # OpenSSL 3 no longer signs it
    cert = good._replace(signature_algorithm=sha1_rsa)
    with pytest.raises(sigverify.SignatureError, match="insecure signature algorithm SHA-1"):
        sigverify.verify(cert.spki, cert.signature_algorithm, cert.tbs, cert.signature)
    assert not cert.signs(cert)  # and a pin never treats it as signed
    unknown = bytes.fromhex("300b06092a864886f70d010102")  # md2WithRSAEncryption
    with pytest.raises(sigverify.SignatureError, match="unsupported signature algorithm"):
        sigverify.verify(cert.spki, unknown, cert.tbs, cert.signature)


def test_a_key_of_another_type_never_verifies() -> None:
    ecdsa_cert = _signed(KEYS["P-256"](), "SHA256", False)
    rsa_cert = _signed(KEYS["RSA-2048"](), "SHA256", False)
    assert not rsa_cert.signs(ecdsa_cert) and not ecdsa_cert.signs(rsa_cert)


def test_an_ec_key_off_its_curve_is_an_error() -> None:
    cert = _signed(KEYS["P-256"](), "SHA256", False)
    point_at = cert.spki.rindex(b"\x04", 0, len(cert.spki) - 64)
    broken = cert.spki[: point_at + 1] + bytes(64)  # (0, 0) is not on P-256
    assert not cert._replace(spki=broken).signs(cert)
