"""The K3s test server speaks the supervisor protocol over real TLS."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from builder.testserver.server import K3sTestServer, free_port
from tests.conftest import REPO, pifleet


def get(
    server: K3sTestServer,
    path: str,
    auth: str | None = None,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    context = ssl.create_default_context(cadata=server.server_ca.pem.decode())
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
    all_headers = dict(headers or {})
    if auth:
        all_headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    conn.request(method, path, body=body, headers=all_headers)
    response = conn.getresponse()
    return response.status, response.read()


def csr(name: str, client: bool) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{name}" if client else name)]
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(attrs))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.DER)


def test_token_hashes_the_served_ca_and_tls_names(tmp_path: Path) -> None:
    with K3sTestServer(state_dir=tmp_path) as server:
        status, body = get(server, "/cacerts")
        assert status == 200
        token = server.mint_token()
        assert token.startswith("K10" + hashlib.sha256(body).hexdigest() + "::server:")
        assert server.mint_token(short=True) == token.rsplit(":", 1)[1]
        cert = x509.load_pem_x509_certificate((tmp_path / "serving.crt").read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
        assert {"127.0.0.1", "10.0.2.2"} <= ips
        assert get(server, "/ping") == (200, b"pong")


def test_credentials_401_403_and_config(tmp_path: Path) -> None:
    with K3sTestServer(state_dir=tmp_path) as server:
        password = server.mint_token(short=True)
        assert get(server, "/v1-k3s/readyz")[0] == 403
        assert get(server, "/v1-k3s/readyz", "node:wrong")[0] == 401
        assert get(server, "/v1-k3s/readyz", f"node:{password}") == (200, b"ok")
        status, body = get(server, "/v1-k3s/config", f"node:{password}")
        assert status == 200 and json.loads(body)["ClusterDNS"]
        status, body = get(server, "/v1-k3s/client-ca.crt", f"node:{password}")
        assert (
            status == 200
            and x509.load_pem_x509_certificate(body).subject != server.server_ca.cert.subject
        )
        assert get(server, "/v1-k3s/nothing", f"node:{password}")[0] == 404


def test_csr_signing_node_passwords_and_registration(tmp_path: Path) -> None:
    with K3sTestServer(state_dir=tmp_path) as server:
        auth = f"node:{server.mint_token(short=True)}"
        headers = {"k3s-Node-Name": "pi-1", "k3s-Node-Password": "first"}
        status, body = get(
            server, "/v1-k3s/serving-kubelet.crt", auth, "POST", csr("pi-1", False), headers
        )
        assert status == 200
        assert x509.load_pem_x509_certificate(body).issuer == server.server_ca.cert.subject
        assert server.registered_nodes() == []
        status, body = get(
            server, "/v1-k3s/client-kubelet.crt", auth, "POST", csr("pi-1", True), headers
        )
        assert status == 200
        cert = x509.load_pem_x509_certificate(body)
        assert cert.issuer == server.client_ca.cert.subject
        assert (
            cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:pi-1"
        )
        assert server.registered_nodes() == ["pi-1"]
        other = {"k3s-Node-Name": "pi-1", "k3s-Node-Password": "second"}
        status, body = get(
            server, "/v1-k3s/client-kubelet.crt", auth, "POST", csr("pi-1", True), other
        )
        assert status == 403 and b"Node password rejected" in body
        assert (
            get(
                server, "/v1-k3s/client-kubelet.crt", "node:bad", "POST", csr("pi-2", True), headers
            )[0]
            == 401
        )
        assert (
            get(server, "/v1-k3s/client-kubelet.crt", auth, "POST", b"garbage", headers)[0] == 400
        )


def test_state_persists_and_down_up_keeps_the_port(tmp_path: Path) -> None:
    with K3sTestServer(state_dir=tmp_path) as server:
        token, port = server.mint_token(), server.port
        server.set_down(True)
        try:
            get(server, "/ping")
            raise AssertionError("the server should be unreachable")
        except OSError:
            pass
        server.set_down(False)
        assert server.port == port and get(server, "/ping")[0] == 200
    with K3sTestServer(state_dir=tmp_path) as again:
        assert again.mint_token() == token


def test_cli_serves_and_writes_the_token_0600(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "builder",
            "test-server",
            "--port",
            str(port),
            "--state-dir",
            str(tmp_path / "s"),
            "--token-out",
            str(tmp_path / "token"),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "token").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        token = (tmp_path / "token").read_text().strip()
        assert (tmp_path / "token").stat().st_mode & 0o777 == 0o600
        check = pifleet(
            "token",
            "check",
            "--server",
            f"https://127.0.0.1:{port}",
            "--token-file",
            str(tmp_path / "token"),
            cwd=tmp_path,
        )
        assert check.returncode == 0 and check.stdout.startswith("ok: ")
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
    assert f"https://127.0.0.1:{port}" in err and "https://10.0.2.2:" in err
    assert token not in err and token.rsplit(":", 1)[1] not in err
