"""Talking to the K3s server before K3s runs: fetch /cacerts, pin the CA by the token's hash
(as K3s hashes it, firstboot/x509.py), prove the token, read the server's clock.

Every failure is a `ServerError` with a kind the caller acts on:
  waiting         network, TLS, timeouts, /cacerts 5xx, readyz 404/429/5xx, a Bearer 403
                  before the API server is up: retry with backoff, and never sooner than
                  the server's `Retry-After` (429 over K3s's in-flight limit)
  token_rejected  401: the credentials are wrong (final once a server says it repeatedly)
  forbidden       403 for Basic credentials: this user may not use that endpoint
  ca_mismatch     the CA is not the one in the token: possible man-in-the-middle
  not_k3s         the endpoint does not behave like a K3s supervisor
TLS trusts only the pinned CA chain and does not check the host name: a real K3s agent
talks to the server through its own 127.0.0.1 load balancer, so a DNS alias, a .local
name, a VIP or a NAT address joins although the certificate does not name it
(tls-san-security). The token never appears in a message.
"""

from __future__ import annotations

import contextlib
import email.utils
import hmac
import http.client
import socket
import ssl
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import urlsplit

from firstboot import x509
from firstboot.token import Token

X509_V_FLAG_NO_CHECK_TIME = 0x200000  # OpenSSL: trust the pinned CA even when the clock is wrong
X509_V_FLAG_PARTIAL_CHAIN = 0x80000  # OpenSSL: a trusted certificate anchors though not self-signed
# OpenSSL's X509_V_ERR_CERT_NOT_YET_VALID and X509_V_ERR_CERT_HAS_EXPIRED: the chain is the
# pinned one, but this device's clock is outside a certificate's validity.
CLOCK_ERRORS = (9, 10)
PROOF_PATHS = {"agent": "/v1-k3s/readyz", "server": "/v1-k3s/encrypt/status"}


class ServerError(Exception):
    def __init__(self, kind: str, message: str, retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after  # seconds the server asked us to wait (429/503)


def retry_after(headers: Dict[str, str]) -> Optional[float]:
    """`Retry-After` in its seconds form (what K3s and the kube-apiserver send), capped at
    an hour; None when absent or an HTTP date (then the backoff alone decides)."""
    value = headers.get("retry-after", "").strip()
    if not value.isdigit():
        return None
    return float(min(int(value), 3600))


def _split(url: str) -> Tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ServerError("not_k3s", "only https:// URLs are supported: " + url)
    return parts.hostname, parts.port or 443


Answer = Tuple[int, bytes, Dict[str, str]]


class Deadline(socket.timeout):
    """The whole request took longer than its timeout (a server dripping bytes included)."""


def _exchange(conn: http.client.HTTPSConnection, path: str, headers: Dict[str, str]) -> Answer:
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read(1 << 20)
    return response.status, body, {k.lower(): v for k, v in response.getheaders()}


def within(timeout: float, conn: http.client.HTTPConnection, work: Callable[[], Answer]) -> Answer:
    """`work()` bounded as a whole: a socket timeout bounds each read only, so past the
    deadline the connection's socket is shut down (which ends a blocked read) and Deadline
    is raised. Name resolution cannot be interrupted; its thread is left to finish alone."""
    outcome: Dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["answer"] = work()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="pifleet-request", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        if conn.sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)
        raise Deadline("no complete answer within " + format(timeout, "g") + " s")
    if "error" in outcome:
        raise outcome["error"]
    answer: Answer = outcome["answer"]
    return answer


def _request(
    url: str,
    path: str,
    context: ssl.SSLContext,
    headers: Optional[Dict[str, str]] = None,
    timeout: float = 10.0,
) -> Answer:
    host, port = _split(url)
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=timeout)
    try:
        return within(timeout, conn, lambda: _exchange(conn, path, headers or {}))
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code in CLOCK_ERRORS:
            raise ServerError(
                "clock",
                "the server's certificate "
                + str(exc.verify_message).replace("certificate ", "")
                + " at this device's time ("
                + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
                + ")",
            ) from None
        raise ServerError(
            "waiting",
            "TLS verification against the pinned CA failed: " + str(exc.verify_message),
        ) from None
    except (OSError, http.client.HTTPException) as exc:  # ssl.SSLError is an OSError
        raise ServerError(
            "waiting", "cannot reach " + host + ":" + str(port) + ": " + _describe(exc)
        ) from None
    finally:
        conn.close()


def get(url: str, path: str, context: ssl.SSLContext, timeout: float = 10.0) -> Answer:
    """GET `path` from `url` over `context`: (status, body, headers); ServerError as above."""
    return _request(url, path, context, timeout=timeout)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, Deadline):
        return str(exc)
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


def pinned_context(
    ca_pem: bytes, check_time: bool = True, partial_chain: bool = True
) -> ssl.SSLContext:
    """TLS that trusts exactly `ca_pem`; no host name check (see the module doc). With
    `partial_chain` every certificate of `ca_pem` is an anchor; without it only a self-signed
    one is, and the others serve as intermediates."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=ca_pem.decode("ascii", "replace"))
    if partial_chain:
        context.verify_flags |= X509_V_FLAG_PARTIAL_CHAIN
    else:
        context.verify_flags &= ~X509_V_FLAG_PARTIAL_CHAIN
    if not check_time:
        context.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
    return context


def fetch_cacerts(url: str, timeout: float = 10.0) -> bytes:
    status, body, headers = _request(url, "/cacerts", bootstrap_context(), timeout=timeout)
    if status >= 500 or status == 429:
        raise ServerError("waiting", url + "/cacerts answered " + str(status), retry_after(headers))
    if status != 200 or b"-----BEGIN CERTIFICATE-----" not in body:
        raise ServerError(
            "not_k3s",
            url + "/cacerts answered " + str(status) + " without a CA bundle: not a K3s server",
        )
    return body


class Pin:
    """The server's CA: the hash K3s computes for it and the certificates to trust
    (firstboot/x509.py: only what the hash proves)."""

    def __init__(self, body: bytes) -> None:
        self.pinned = x509.pin(body)
        self.ca_hash, self.trust = self.pinned.ca_hash, self.pinned.trust

    def context(self, check_time: bool = True) -> ssl.SSLContext:
        """TLS that trusts what the pin proves, and nothing else."""
        return pinned_context(self.trust, check_time, self.pinned.partial_chain)


def check_pin(body: bytes, token: Token) -> Pin:
    """The server's CA when it matches the token's hash (constant time) and every certificate
    in the bundle verifies up to the pinned root; ServerError otherwise."""
    pin = Pin(body)
    if token.ca_hash is not None and not hmac.compare_digest(pin.ca_hash, token.ca_hash):
        raise ServerError(
            "ca_mismatch",
            "token CA hash does not match the server's CA (sha256 " + pin.ca_hash[:16] + "...): "
            "possible man-in-the-middle, or a token from another cluster",
        )
    if pin.pinned.problem:
        raise ServerError(
            "ca_mismatch", pin.pinned.problem + ": possible man-in-the-middle; nothing was sent"
        )
    return pin


def prove_token(
    url: str, token: Token, context: ssl.SSLContext, timeout: float = 10.0, role: str = "agent"
) -> None:
    """Prove the token as K3s uses it: user `node` on an agent route (Bearer for a bootstrap
    token), or user `server` on a route K3s guards for servers."""
    path = PROOF_PATHS[role]
    user = "node" if role == "agent" else "server"
    status, _body, headers = _request(
        url, path, context, {"Authorization": token.authorization(user)}, timeout
    )
    if status == 200:
        return
    if status == 401:
        raise ServerError("token_rejected", "the server rejected the token (401 Unauthorized)")
    if status == 403 and token.bootstrap:
        raise ServerError(
            "waiting", "bootstrap token not accepted yet (403): the server's API server is not up"
        )
    if status == 403:
        raise ServerError(
            "forbidden", "the server refused user " + user + " on " + path + " (403 Forbidden)"
        )
    raise ServerError(
        "waiting",
        "the server is not ready (" + path + " answered " + str(status) + ")",
        retry_after(headers),
    )


def server_time(url: str, context: ssl.SSLContext, timeout: float = 10.0) -> float:
    """The server's clock from the Date header of /ping (authenticated by the pinned CA)."""
    _status, _body, headers = _request(url, "/ping", context, timeout=timeout)
    date = headers.get("date")
    if not date:
        raise ServerError("waiting", "the server sent no Date header")
    return email.utils.parsedate_to_datetime(date).timestamp()
