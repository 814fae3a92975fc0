"""A protocol-faithful K3s supervisor for tests and `pifleet boot-test` (not a Kubernetes).

It serves, over real TLS with CAs made by `cryptography`, the endpoints a K3s
agent touches before it runs anything:

  GET  /cacerts                        the server CA bundle (no auth): what K10 tokens hash
  GET  /ping                           "pong" (no auth)
  GET  /v1-k3s/readyz                  200 with valid credentials, 401 wrong, 403 none
  GET  /v1-k3s/config                  agent configuration (JSON)
  GET  /v1-k3s/client-ca.crt           client CA
  GET  /v1-k3s/server-ca.crt           server CA
  POST /v1-k3s/serving-kubelet.crt     DER CSR in, signed certificate out
  POST /v1-k3s/client-kubelet.crt      DER CSR in, signed certificate out; registers the node

Credentials: HTTP Basic `node:<password>` or `server:<password>` where the
password is the cluster token's. CSR posts carry `k3s-Node-Name` and
`k3s-Node-Password`; the first password seen for a name is kept (hashed) and a
different one later gets 403 "Node password rejected", like K3s' node-passwd.

Python API:
    with K3sTestServer(port=0, state_dir=path) as server:
        server.url                  https://127.0.0.1:<port>
        server.guest_url            https://10.0.2.2:<port> (seen from a QEMU user-mode guest)
        server.mint_token()         K10<ca hash>::server:<password>;  short=True: password only
        server.registered_nodes()   names that completed client-kubelet.crt, in order
        server.set_down(True)       stop listening (unreachable), set_down(False) to come back
        server.requests             (method, path, authorized?) of every request seen
The CA, token password and node passwords persist in `state_dir`, so a
restarted server keeps accepting the same tokens.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from builder.testserver import kubeapi

GUEST_HOST = "10.0.2.2"  # the host, as QEMU's user-mode network shows it to the guest
REJECTED = (
    "Node password rejected, duplicate hostname or contents of '/etc/rancher/node/password' "
    "may not match server node-passwd entry, try enabling a unique node name with the --with-node-id flag"
)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    authorized: bool
    had_credentials: bool
    node: str | None


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class CertificateAuthority:
    """An ECDSA P-256 CA like K3s' own (k3s-server-ca, k3s-client-ca)."""

    def __init__(self, directory: Path, name: str) -> None:
        key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
        if key_path.exists() and cert_path.exists():
            loaded = serialization.load_pem_private_key(key_path.read_bytes(), None)
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
            self.key = loaded
            self.cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            return
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(f"{name}@{int(_now().timestamp())}")
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(days=1))
            .not_valid_after(_now() + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        key_path.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        cert_path.write_bytes(self.pem)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        subject: x509.Name,
        public_key: Any,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName] | None = None,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(hours=1))
            .not_valid_after(_now() + datetime.timedelta(days=365))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256())


class K3sTestServer:
    def __init__(
        self,
        port: int = 0,
        state_dir: Path | None = None,
        host: str = "127.0.0.1",
        extra_sans: tuple[str, ...] = (),
    ) -> None:
        self._tmp = None if state_dir else tempfile.TemporaryDirectory(prefix="pifleet-k3s-")
        self.state_dir = Path(state_dir or self._tmp.name)  # type: ignore[union-attr]
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.server_ca = CertificateAuthority(self.state_dir, "server-ca")
        self.client_ca = CertificateAuthority(self.state_dir, "client-ca")
        self.password = self._load_password()
        self.kube = kubeapi.KubeApi(kubeapi.NodeStore(), self._admin_token())
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._context = self._serving_context(extra_sans)
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------

    def __enter__(self) -> K3sTestServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def start(self) -> None:
        handler = type("Handler", (_Handler,), {"server_state": self})
        httpd = ThreadingHTTPServer((self.host, self._port), handler)
        httpd.daemon_threads = True
        httpd.socket = self._context.wrap_socket(httpd.socket, server_side=True)
        self._port = httpd.server_address[1]
        self._httpd = httpd
        self._write_kubeconfig()
        self._thread = threading.Thread(
            target=httpd.serve_forever, name="k3s-test-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def set_down(self, down: bool) -> None:
        """Unreachable (nothing listens on the port) or back, on the same port."""
        if down:
            self.stop()
        elif self._httpd is None:
            self.start()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self._port}"

    @property
    def guest_url(self) -> str:
        return f"https://{GUEST_HOST}:{self._port}"

    # -- tokens and records ----------------------------------------------------

    def mint_token(self, short: bool = False, user: str = "server") -> str:
        if short:
            return self.password
        digest = hashlib.sha256(self.server_ca.pem).hexdigest()
        return f"K10{digest}::{user}:{self.password}"

    def registered_nodes(self) -> list[str]:
        return list(self._registry().get("registered", []))

    def node_password_hash(self, name: str) -> str | None:
        known: dict[str, str] = self._registry().get("passwords", {})
        return known.get(name)

    def preregister(self, name: str, password: str) -> None:
        """Make the server already know `name` with `password` (a node that joined before)."""
        with self._lock:
            registry = self._registry()
            registry.setdefault("passwords", {})[name] = _hash(password)
            self._save_registry(registry)

    # -- internals -------------------------------------------------------------

    def _load_password(self) -> str:
        path = self.state_dir / "token-password"
        if not path.exists():
            path.write_text(secrets.token_hex(16))
            path.chmod(0o600)
        return path.read_text().strip()

    def _admin_token(self) -> str:
        """The Kubernetes API's admin bearer token, kept 0600 from its first byte."""
        path = self.state_dir / "kube-admin-token"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(24))
        return path.read_text().strip()

    def _write_kubeconfig(self) -> None:
        """`<state_dir>/kubeconfig.yaml` (0600): kubectl and `pifleet status` read the nodes."""
        data = kubeapi.kubeconfig(self.url, self.server_ca.pem, self.kube.admin_token)
        path = self.state_dir / "kubeconfig.yaml"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig.yaml"

    def _serving_context(self, extra_sans: tuple[str, ...]) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName("kubernetes")]
        for item in ("127.0.0.1", GUEST_HOST, *extra_sans):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(item)))
            except ValueError:
                sans.append(x509.DNSName(item))
        cert = self.server_ca.issue(
            _name("k3s"), key.public_key(), x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, sans
        )
        cert_file = self.state_dir / "serving.crt"
        key_file = self.state_dir / "serving.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + self.server_ca.pem)
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_file.chmod(0o600)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        return context

    def _registry(self) -> dict[str, Any]:
        path = self.state_dir / "registry.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _save_registry(self, registry: dict[str, Any]) -> None:
        path = self.state_dir / "registry.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(registry, indent=2, sort_keys=True))
        tmp.replace(path)

    def check_credentials(self, header: str | None) -> int:
        """200 when the Authorization header carries the cluster password, 401 wrong, 403 none."""
        if not header:
            return 403
        scheme, _, value = header.partition(" ")
        if scheme == "Basic":
            try:
                user, _, password = base64.b64decode(value).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return 401
            if user in ("node", "server") and hmac.compare_digest(password, self.password):
                return 200
        return 401

    def sign_node_csr(self, kind: str, name: str, password: str, der: bytes) -> tuple[int, bytes]:
        """(status, body) for a serving/client kubelet CSR from node `name`."""
        try:
            csr = x509.load_der_x509_csr(der)
        except ValueError:
            return 400, b"invalid certificate signing request\n"
        if not csr.is_signature_valid:
            return 400, b"certificate signing request signature is invalid\n"
        with self._lock:
            registry = self._registry()
            known = registry.setdefault("passwords", {}).get(name)
            if known is not None and not hmac.compare_digest(known, _hash(password)):
                return 403, (REJECTED + "\n").encode()
            registry["passwords"][name] = _hash(password)
            if kind == "client":
                nodes = registry.setdefault("registered", [])
                if name not in nodes:
                    nodes.append(name)
            self._save_registry(registry)
        if kind == "client":
            self.kube.store.register(name)
        if kind == "client":
            subject = x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{name}"),
                ]
            )
            cert = self.client_ca.issue(
                subject, csr.public_key(), x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
            )
            chain = self.client_ca.pem
        else:
            cert = self.server_ca.issue(
                _name(name),
                csr.public_key(),
                x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                [x509.DNSName(name)],
            )
            chain = self.server_ca.pem
        return 200, cert.public_bytes(serialization.Encoding.PEM) + chain

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)


def _hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    server_state: K3sTestServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are recorded, never printed (they carry credentials)

    def _reply(self, status: int, body: bytes, kind: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self, authorized: bool, node: str | None = None) -> None:
        had = self.headers.get("Authorization") is not None
        self.server_state.record(Request(self.command, self.path, authorized, had, node))

    def do_GET(self) -> None:
        state = self.server_state
        if self.path == "/cacerts":
            self._record(False)
            return self._reply(200, state.server_ca.pem)
        if self.path == "/ping":
            self._record(False)
            return self._reply(200, b"pong")
        if state.kube.handles(self.path):
            headers = {k.lower(): v for k, v in self.headers.items()}
            return kubeapi.send(self, state.kube.answer("GET", self.path, headers))
        auth = state.check_credentials(self.headers.get("Authorization"))
        self._record(auth == 200)
        if self.path not in _AUTHENTICATED_GETS:
            return self._reply(404, b"404 page not found\n")
        if auth != 200:
            return self._reply(auth, b"Unauthorized\n" if auth == 401 else b"Forbidden\n")
        if self.path == "/v1-k3s/readyz":
            return self._reply(200, b"ok")
        if self.path == "/v1-k3s/config":
            config = {
                "ClusterDomain": "cluster.local",
                "ClusterDNS": "10.43.0.10",
                "ServiceCIDR": "10.43.0.0/16",
            }
            return self._reply(200, json.dumps(config).encode(), "application/json")
        ca = state.client_ca if self.path.endswith("client-ca.crt") else state.server_ca
        return self._reply(200, ca.pem)

    def do_POST(self) -> None:
        state = self.server_state
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length) if length else b""
        kind = {
            "/v1-k3s/serving-kubelet.crt": "serving",
            "/v1-k3s/client-kubelet.crt": "client",
        }.get(self.path)
        node = self.headers.get("k3s-Node-Name")
        auth = state.check_credentials(self.headers.get("Authorization"))
        self._record(auth == 200, node)
        if kind is None:
            return self._reply(404, b"404 page not found\n")
        if auth != 200:
            return self._reply(auth, b"Unauthorized\n" if auth == 401 else b"Forbidden\n")
        password = self.headers.get("k3s-Node-Password")
        if not node or not password:
            return self._reply(400, b"missing k3s-Node-Name or k3s-Node-Password\n")
        status, reply = state.sign_node_csr(kind, node, password, body)
        return self._reply(status, reply)


_AUTHENTICATED_GETS = {
    "/v1-k3s/readyz",
    "/v1-k3s/config",
    "/v1-k3s/client-ca.crt",
    "/v1-k3s/server-ca.crt",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
