"""The detached JWS that signs kube-public/cluster-info, standard library only.

| rule | source |
|---|---|
| HS256 (HMAC-SHA256), keyed with the token secret's bytes | kubernetes/cluster-bootstrap token/jws/jws.go: ComputeDetachedSignature (jose.HS256, Key: []byte(tokenSecret)) |
| the protected header is exactly `{"alg":"HS256","kid":"<token-id>"}` (go-jose writes map keys sorted, no spaces; kid is passed as an extra header because a symmetric key does not add it) | jws.go: ComputeDetachedSignature (ExtraHeaders kid) |
| signing input: base64url(header) "." base64url(content), unpadded | RFC 7515 section 5.1 (go-jose CompactSerialize) |
| detached form: the content part is left out, `<header>..<signature>` | jws.go: stripContent; RFC 7515 appendix F |
| valid means: the received string equals the one computed from the content, the token id and the secret | jws.go: DetachedTokenIsValid |

`verify` compares the whole string in constant time (it is what DetachedTokenIsValid compares,
so another alg, another kid or a compact form with content can never be valid), and reads the
header first only to say in one line what is wrong. No message holds the secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json


class JWSError(ValueError):
    """The signature does not verify; the message never contains the token secret."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    if not text or any(c not in _B64URL for c in text) or len(text) % 4 == 1:
        raise JWSError("the JWS header is not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def protected_header(token_id: str) -> str:
    """The base64url protected header go-jose writes for HS256 with a kid."""
    header = json.dumps({"alg": "HS256", "kid": token_id}, separators=(",", ":"), sort_keys=True)
    return b64url(header.encode("utf-8"))


def detached_signature(content: bytes, token_id: str, secret: str) -> str:
    """`<header>..<signature>` as ComputeDetachedSignature computes it."""
    header = protected_header(token_id)
    signing_input = (header + "." + b64url(content)).encode("ascii")
    mac = hmac.new(secret.encode("utf-8"), signing_input, hashlib.sha256).digest()
    return header + ".." + b64url(mac)


def _check_header(received: str, token_id: str) -> None:
    """One line about the header, when it is not the one kubeadm's signer writes."""
    parts = received.split(".")
    if len(parts) != 3:
        raise JWSError("the signature is not a JWS (expected <header>..<signature>)")
    if parts[1]:
        raise JWSError("the JWS carries its content: only the detached form is accepted")
    try:
        header = json.loads(_unb64url(parts[0]).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise JWSError("the JWS header is not base64url JSON") from None
    if not isinstance(header, dict):
        raise JWSError("the JWS header is not a JSON object")
    alg = header.get("alg")
    if alg != "HS256":
        shown = alg if isinstance(alg, str) and alg.isalnum() and len(alg) < 16 else "?"
        raise JWSError("the JWS algorithm is " + shown + ", only HS256 is accepted")
    if header.get("kid") != token_id:
        raise JWSError("the JWS is for another token id (kid), not " + token_id)
    if set(header) != {"alg", "kid"}:
        raise JWSError("the JWS header has fields besides alg and kid")


def verify(received: str, content: bytes, token_id: str, secret: str) -> None:
    """Nothing when `received` is the detached JWS of `content` for the token; JWSError with
    one line otherwise (DetachedTokenIsValid, compared in constant time)."""
    _check_header(received, token_id)
    expected = detached_signature(content, token_id, secret)
    if not hmac.compare_digest(received.encode("utf-8"), expected.encode("ascii")):
        raise JWSError(
            "the cluster-info signature for token id " + token_id + " does not verify: "
            "a wrong token secret, or a server that does not know this token"
        )
