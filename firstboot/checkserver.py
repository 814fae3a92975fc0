"""One-shot pre-flight of a K3s server and a token, for operators and `pifleet token check`:
fetch /cacerts, check the CA hash, prove the token on /v1-k3s/readyz. One line out."""

from __future__ import annotations

from typing import Tuple

from firstboot.server import ServerError, check_pin, fetch_cacerts, pinned_context, prove_token
from firstboot.token import Token

LABELS = {
    "unreachable": "unreachable",
    "ca_mismatch": "CA hash mismatch",
    "token_rejected": "token rejected",
    "not_k3s": "not a K3s server",
}


def check(server: str, token: Token, timeout: float = 10.0) -> Tuple[bool, str]:
    """(ok, one line) for `server` and `token`."""
    server = server.rstrip("/")
    try:
        body = fetch_cacerts(server, timeout)
        digest = check_pin(body, token)
        prove_token(server, token, pinned_context(body), timeout)
    except ServerError as exc:
        return False, LABELS.get(exc.kind, exc.kind) + ": " + str(exc)
    pinned = (
        "CA pinned (sha256 " + digest[:16] + "...)"
        if token.ca_hash
        else "CA NOT pinned (token has no CA hash)"
    )
    return True, "ok: " + server + " is a K3s server; " + pinned + "; token accepted"
