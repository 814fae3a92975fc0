"""A device whose clock passed the build-time check is still outside the server's
certificate validity (issue 14, no real-time clock): the agent says so in one line and takes
the time from the server its pin authenticates.

Found by the QEMU series: a guest with its RTC at 1970 came up at the time
systemd-timesyncd keeps on disk (after the image's build time, before the test server's
certificates), and its agent waited in `verify` forever on "certificate is not yet valid".
Here the certificate's times are moved instead of the clock: a real TLS server on
127.0.0.1 with a serving certificate valid only from tomorrow (or expired yesterday).
"""

from __future__ import annotations

import datetime
import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from firstboot.server import ServerError, pinned_context, server_time


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _self_signed_ca(
    common: str, serial: int, before: datetime.timedelta, after: datetime.timedelta
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A CA certificate valid from now - before to now + after, and its key."""
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name(common)).issuer_name(_name(common))
        .public_key(key.public_key()).serial_number(serial)
        .not_valid_before(now - before).not_valid_after(now + after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert, key


@pytest.fixture(params=["not yet valid", "expired"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, bytes, str]]:
    """(url, pinned CA PEM, what is wrong) of a /ping server whose certificate is out of time."""
    now = datetime.datetime.now(datetime.UTC)
    days = datetime.timedelta(days=1)
    ca, ca_key = _self_signed_ca("k3s-server-ca", 1, 10 * days, 3650 * days)
    if request.param == "not yet valid":
        start, end = now + datetime.timedelta(days=1), now + datetime.timedelta(days=365)
    else:
        start, end = now - datetime.timedelta(days=365), now - datetime.timedelta(days=1)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder().subject_name(_name("k3s")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(2).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    (tmp_path / "cert.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(_pem(key))

    class Ping(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)  # sends a Date header
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"pong")

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ping)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{httpd.server_address[1]}"
        yield url, ca.public_bytes(serialization.Encoding.PEM), request.param
    finally:
        httpd.shutdown()


def test_a_certificate_out_of_time_is_a_clock_problem_in_one_line(
    server: tuple[str, bytes, str],
) -> None:
    url, ca, wrong = server
    with pytest.raises(ServerError) as caught:
        server_time(url, pinned_context(ca))
    assert caught.value.kind == "clock"
    message = str(caught.value)
    assert message.startswith(
        f"the server's certificate {'is not yet valid' if wrong == 'not yet valid' else 'has expired'} at this device's time ("
    )
    assert "\n" not in message


def test_the_pinned_server_still_gives_the_time_with_times_unchecked(
    server: tuple[str, bytes, str],
) -> None:
    url, ca, _wrong = server
    now = datetime.datetime.now(datetime.UTC).timestamp()
    assert abs(server_time(url, pinned_context(ca, check_time=False)) - now) < 60


def test_another_ca_is_never_a_clock_problem(server: tuple[str, bytes, str]) -> None:
    url, _ca, _wrong = server
    days = datetime.timedelta(days=1)
    other, _key = _self_signed_ca("other", 3, days, 30 * days)
    pem = other.public_bytes(serialization.Encoding.PEM)
    for check_time in (True, False):
        with pytest.raises(ServerError) as caught:
            server_time(url, pinned_context(pem, check_time=check_time))
        assert caught.value.kind == "waiting" and "pinned CA failed" in str(caught.value)
