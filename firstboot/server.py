"""Talking to the K3s server before K3s runs: fetch /cacerts, pin the CA by the token's hash,
prove the token on /v1-k3s/readyz, read the server's clock.

Every failure is a `ServerError` with a kind the caller acts on:
  unreachable     network or TLS trouble: retry later
  ca_mismatch     the CA is not the one in the token: possible man-in-the-middle, stop
  token_rejected  401: the token is wrong, stop
  not_k3s         the endpoint does not behave like a K3s supervisor, stop
The token never appears in a message.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import http.client
import socket
import ssl
from typing import Dict, Optional, Tuple
from urllib.parse import urlsplit

from firstboot.token import Token

X509_V_FLAG_NO_CHECK_TIME = 0x200000  # OpenSSL: trust the pinned CA even when the clock is wrong


class ServerError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _split(url: str) -> Tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ServerError("not_k3s", "server must be an https:// URL: " + url)
    return parts.hostname, parts.port or 443


def _request(
    url: str,
    path: str,
    context: ssl.SSLContext,
    headers: Optional[Dict[str, str]] = None,
    timeout: float = 10.0,
) -> Tuple[int, bytes, Dict[str, str]]:
    host, port = _split(url)
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        body = response.read(1 << 20)
        return response.status, body, {k.lower(): v for k, v in response.getheaders()}
    except ssl.SSLCertVerificationError as exc:
        raise ServerError(
            "unreachable",
            "TLS verification against the pinned CA failed: " + str(exc.verify_message),
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        raise ServerError(
            "unreachable", "cannot reach " + host + ":" + str(port) + ": " + _describe(exc)
        ) from None
    finally:
        conn.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__ + (": " + str(exc) if str(exc) else "")


def bootstrap_context() -> ssl.SSLContext:
    """TLS without verification, only to download /cacerts, whose hash is checked afterwards."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def pinned_context(ca_pem: bytes, check_time: bool = True) -> ssl.SSLContext:
    """TLS that trusts exactly the pinned CA bundle (and checks the host name)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=ca_pem.decode("ascii", "replace"))
    if not check_time:
        context.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
    return context


def fetch_cacerts(url: str, timeout: float = 10.0) -> bytes:
    status, body, _ = _request(url, "/cacerts", bootstrap_context(), timeout=timeout)
    if status != 200 or b"-----BEGIN CERTIFICATE-----" not in body:
        raise ServerError(
            "not_k3s",
            url + "/cacerts answered " + str(status) + " without a CA bundle: not a K3s server",
        )
    return body


def ca_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def check_pin(body: bytes, token: Token) -> str:
    """The CA's hash when it matches the token's (constant-time); ServerError otherwise."""
    actual = ca_hash(body)
    if token.ca_hash is not None and not hmac.compare_digest(actual, token.ca_hash):
        raise ServerError(
            "ca_mismatch",
            "token CA hash does not match the server's CA (sha256 " + actual[:16] + "...): "
            "possible man-in-the-middle, or a token from another cluster",
        )
    return actual


def prove_token(url: str, token: Token, context: ssl.SSLContext, timeout: float = 10.0) -> None:
    status, _body, _ = _request(
        url, "/v1-k3s/readyz", context, {"Authorization": token.authorization()}, timeout
    )
    if status == 200:
        return
    if status == 401:
        raise ServerError("token_rejected", "the server rejected the token (401 Unauthorized)")
    if status == 403:
        raise ServerError("token_rejected", "the server refused the credentials (403 Forbidden)")
    if status == 404:
        raise ServerError("not_k3s", url + "/v1-k3s/readyz does not exist: not a K3s server")
    raise ServerError("unreachable", "the server is not ready (" + str(status) + ")")


def server_time(url: str, context: ssl.SSLContext, timeout: float = 10.0) -> float:
    """The server's clock from the Date header of /ping (authenticated by the pinned CA)."""
    _status, _body, headers = _request(url, "/ping", context, timeout=timeout)
    date = headers.get("date")
    if not date:
        raise ServerError("unreachable", "the server sent no Date header")
    return email.utils.parsedate_to_datetime(date).timestamp()
