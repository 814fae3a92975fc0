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
from collections.abc import Iterator
from pathlib import Path

import pytest
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
    cert: tuple[Path, Path] | None = None,
) -> tuple[int, bytes]:
    """One request; `auth` is `user:password` (Basic), `Bearer <t>`, or None."""
    context = ssl.create_default_context(cadata=server.ca.cacerts.decode())
    context.check_hostname = False
    if cert is not None:
        context.load_cert_chain(*cert)
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
    all_headers = dict(headers or {})
    if auth and auth.startswith("Bearer "):
        all_headers["Authorization"] = auth
    elif auth:
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
        assert {"127.0.0.1", "10.0.2.2"} <= serving_ips(tmp_path)
        assert get(server, "/ping") == (200, b"pong")


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
        assert server.registered_nodes() == [], "a kubelet certificate is not yet a Node"
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


def serving_ips(state: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate((state / "serving.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}


# Who gets what, per endpoint kind (K3s router groups + doAuth; see rules.py's table):
#   agent route readyz, server route encrypt/status, node route connect, apiserver /api/v1/nodes
MATRIX = [
    ("no credentials", None, (403, 403, 403, 401)),
    ("node, right password", "node:{pw}", (200, 403, 403, 401)),
    ("node, wrong password", "node:wrong", (401, 401, 401, 401)),
    ("server, right password", "server:{pw}", (403, 200, 403, 401)),
    ("server, wrong password", "server:wrong", (401, 401, 401, 401)),
    ("unknown user", "admin:{pw}", (401, 401, 401, 401)),
    ("empty user", ":{pw}", (401, 401, 401, 401)),
    ("bootstrap token", "Bearer {boot}", (200, 403, 403, 403)),
    ("expired bootstrap token", "Bearer {expired}", (401, 401, 401, 401)),
    ("unknown bootstrap token", "Bearer abcdef.0123456789abcdef", (401, 401, 401, 401)),
    ("not a bootstrap token", "Bearer something", (401, 401, 401, 401)),
]
PATHS = ("/v1-k3s/readyz", "/v1-k3s/encrypt/status", "/v1-k3s/connect", "/api/v1/nodes")


@pytest.fixture(scope="module")
def strict(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[K3sTestServer, dict[str, str]]]:
    with K3sTestServer(state_dir=tmp_path_factory.mktemp("strict")) as server:
        values = {
            "pw": server.password,
            "boot": server.create_bootstrap_token(),
            "expired": server.create_bootstrap_token(ttl=0.001),
        }
        time.sleep(0.01)
        yield server, values


@pytest.mark.parametrize(("who", "auth", "expected"), MATRIX, ids=[m[0] for m in MATRIX])
def test_status_per_user_and_endpoint(
    strict: tuple[K3sTestServer, dict[str, str]],
    who: str,
    auth: str | None,
    expected: tuple[int, ...],
) -> None:
    server, values = strict
    header = auth.format(**values) if auth else None
    got = tuple(get(server, path, header)[0] for path in PATHS)
    assert got == expected
    assert get(server, "/cacerts", header)[0] == 200 and get(server, "/ping", header)[0] == 200


def test_unknown_paths_and_methods_as_k3s(strict: tuple[K3sTestServer, dict[str, str]]) -> None:
    server, values = strict
    node = f"node:{values['pw']}"
    assert get(server, "/v1-k3s/nothing", node)[0] == 401  # falls through to the apiserver
    assert get(server, "/v1-k3s/token", f"server:{values['pw']}")[0] == 405  # PUT only
    status, body = get(server, "/v1-k3s/server-bootstrap", f"server:{values['pw']}")
    assert status == 400 and json.loads(body)["message"] == "etcd disabled"
    status, body = get(server, "/v1-k3s/readyz")
    assert json.loads(body) | {"metadata": {}} == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "forbidden",
        "reason": "Forbidden",
        "code": 403,
    }
    assert json.loads(get(server, "/v1-k3s/readyz", "node:x")[1])["message"] == "not authorized"


def test_phases_count_from_the_first_request(tmp_path: Path) -> None:
    phases = {"cacerts_error": 30, "apiserver_down": 30, "core_not_ready": 30, "throttle": 0}
    with K3sTestServer(state_dir=tmp_path, phases=phases, cacerts_error_code=502) as server:
        node, boot = f"node:{server.password}", f"Bearer {server.create_bootstrap_token()}"
        assert get(server, "/cacerts")[0] == 502
        assert get(server, "/v1-k3s/readyz", boot)[0] == 403  # no apiserver authenticator yet
        status, body = get(server, "/v1-k3s/readyz", node)
        assert status == 503 and json.loads(body)["message"] == "runtime core not ready"
        assert get(server, "/api/v1/nodes/x", node)[0] == 503
        assert get(server, "/v1-k3s/config", node)[0] == 200
        for phase in ("cacerts_error", "apiserver_down", "core_not_ready"):
            server.set_phase(phase, 0)
        assert get(server, "/cacerts")[0] == 200
        assert get(server, "/v1-k3s/readyz", boot) == (200, b"ok")
        server.set_phase("throttle", 30)
        conn_status = get(server, "/v1-k3s/readyz", node)[0]
        assert conn_status == 429 and get(server, "/v1-k3s/encrypt/status", node)[0] == 403


def test_bundle_ca_hash_is_the_root_and_openssl_verifies_the_chain(tmp_path: Path) -> None:
    with K3sTestServer(state_dir=tmp_path, ca_kind="bundle") as server:
        status, body = get(server, "/cacerts")
        certs = x509.load_pem_x509_certificates(body)
        assert status == 200 and len(certs) == 3
        root = certs[-1].public_bytes(serialization.Encoding.DER)
        assert (
            server.ca_hash == hashlib.sha256(root).hexdigest() != hashlib.sha256(body).hexdigest()
        )
        assert server.mint_token().startswith(f"K10{server.ca_hash}::server:")
        (tmp_path / "root.pem").write_bytes(certs[-1].public_bytes(serialization.Encoding.PEM))
        (tmp_path / "mid.pem").write_bytes(body[: body.rindex(b"-----BEGIN")])
        proc = subprocess.run(
            [
                "openssl",
                "verify",
                "-CAfile",
                tmp_path / "root.pem",
                "-untrusted",
                tmp_path / "mid.pem",
                tmp_path / "serving.crt",
            ],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_unnamed_certificate_fails_a_hostname_check(tmp_path: Path) -> None:
    with K3sTestServer(state_dir=tmp_path, named=False) as server:
        assert serving_ips(tmp_path) == set()
        context = ssl.create_default_context(cadata=server.ca.cacerts.decode())
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
        with pytest.raises(ssl.SSLCertVerificationError):
            conn.request("GET", "/ping")
        assert get(server, "/ping") == (200, b"pong")  # the chain itself is fine


def test_a_node_exists_only_once_its_kubelet_creates_it(tmp_path: Path) -> None:
    with K3sTestServer(state_dir=tmp_path) as server:
        auth = f"node:{server.password}"
        headers = {"k3s-Node-Name": "pi-1", "k3s-Node-Password": "pw"}
        key = ec.generate_private_key(ec.SECP256R1())
        request = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "system:node:pi-1")]))
            .sign(key, hashes.SHA256())
        )
        der = request.public_bytes(serialization.Encoding.DER)
        status, body = get(server, "/v1-k3s/client-kubelet.crt", auth, "POST", der, headers)
        assert status == 200
        (tmp_path / "kubelet.crt").write_bytes(body)
        (tmp_path / "kubelet.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        cert = (tmp_path / "kubelet.crt", tmp_path / "kubelet.key")
        node = json.dumps({"kind": "Node", "metadata": {"name": "pi-1"}}).encode()
        other = json.dumps({"kind": "Node", "metadata": {"name": "pi-2"}}).encode()
        assert get(server, "/api/v1/nodes/pi-1", cert=cert)[0] == 404
        assert get(server, "/api/v1/nodes", auth, "POST", node)[0] == 401
        assert get(server, "/api/v1/nodes", None, "POST", other, cert=cert)[0] == 403
        assert get(server, "/api/v1/nodes", None, "POST", node, cert=cert)[0] == 201
        assert get(server, "/api/v1/nodes/pi-1", cert=cert)[0] == 200
        assert server.registered_nodes() == ["pi-1"]
        wrong = {"k3s-Node-Name": "pi-9", "k3s-Node-Password": "pw"}
        status, _ = get(server, "/v1-k3s/client-kubelet.crt", None, "POST", der, wrong, cert=cert)
        assert status == 400  # the client certificate names another node


def test_set_password_and_bootstrap_token_rules(tmp_path: Path) -> None:
    with K3sTestServer(state_dir=tmp_path) as server:
        old = server.password
        server.set_password("new-password")
        assert get(server, "/v1-k3s/readyz", f"node:{old}")[0] == 401
        assert get(server, "/v1-k3s/readyz", "node:new-password")[0] == 200
        token = server.create_bootstrap_token(token="abcdef.0123456789abcdef")
        with pytest.raises(ValueError, match="already exists"):
            server.create_bootstrap_token(token="abcdef.fedcba9876543210")
        with pytest.raises(ValueError):
            server.create_bootstrap_token(token="ABCDEF.0123456789abcdef")
        assert server.mint_token("bare-bootstrap").count(".") == 1
        assert server.mint_token("bootstrap").startswith(f"K10{server.ca_hash}::")
    with K3sTestServer(state_dir=tmp_path) as again:
        assert again.password == "new-password"
        assert get(again, "/v1-k3s/readyz", f"Bearer {token}")[0] == 200


def test_cli_modes_as_flags(tmp_path: Path) -> None:
    """`pifleet test-server` in the hardest mode: custom CA bundle, a certificate that names
    no address, a bootstrap token, /cacerts 502 and the API server down at first."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "builder", "test-server", "--port", str(port),
            "--state-dir", str(tmp_path / "s"), "--token-out", str(tmp_path / "token"),
            "--ca", "bundle", "--unnamed", "--token-form", "bootstrap",
            "--cacerts-error-for", "2", "--cacerts-error-code", "502", "--apiserver-down-for", "6",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "token").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        token = (tmp_path / "token").read_text().strip()
        assert token.startswith("K10") and "::" in token and "." in token.split("::")[1]
        assert serving_ips(tmp_path / "s") == set()
        args = ("token", "check", "--server", f"https://127.0.0.1:{port}", "--token-file", "token")
        seen = [pifleet(*args, cwd=tmp_path)]
        deadline = time.monotonic() + 60
        while seen[-1].returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            seen.append(pifleet(*args, cwd=tmp_path))
        outs = [p.stdout for p in seen]
        assert "cacerts answered 502" in outs[0]  # the first request meets the 502 phase
        assert any("bootstrap token not accepted yet (403)" in out for out in outs), outs
        assert seen[-1].returncode == 0 and "CA pinned" in outs[-1], outs
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
    assert "CA: bundle" in err and token.split("::")[1] not in err
