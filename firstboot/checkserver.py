"""One-shot pre-flight of a K3s server and a token, for operators and `pifleet token check`:
fetch /cacerts, check the CA hash as K3s computes it, prove the token. One line out."""

from __future__ import annotations

from typing import Tuple

from firstboot.server import ServerError, check_pin, fetch_cacerts, prove_token
from firstboot.token import Token

LABELS = {
    "waiting": "unreachable or not ready",
    "ca_mismatch": "CA hash mismatch",
    "token_rejected": "token rejected",
    "forbidden": "forbidden",
    "not_k3s": "not a K3s server",
}


def check(
    server: str, token: Token, timeout: float = 10.0, role: str = "agent"
) -> Tuple[bool, str]:
    """(ok, one line) for `server` and `token`."""
    server = server.rstrip("/")
    try:
        body = fetch_cacerts(server, timeout)
        pin = check_pin(body, token)
        prove_token(server, token, pin.context(), timeout, role)
    except ServerError as exc:
        return False, LABELS.get(exc.kind, exc.kind) + ": " + str(exc)
    pinned = (
        "CA pinned (sha256 " + pin.ca_hash[:16] + "...)"
        if token.pinned
        else "CA NOT pinned (the token has no CA hash; server CA sha256 "
        + pin.ca_hash[:16]
        + "...)"
    )
    return True, "ok: " + server + " is a K3s server; " + pinned + "; token accepted"
