"""A protocol-faithful K3s supervisor for tests and `pifleet boot-test` (not a Kubernetes).

Over real TLS with CAs made by `cryptography` (ca.py), it answers what a K3s agent touches
before it runs anything, with the status codes and groups of rules.py (that module's
table cites the K3s source of every rule):

  /cacerts, /ping                      no auth
  /v1-k3s/{readyz,config,apiservers,client-ca.crt,server-ca.crt}     agent routes
  /v1-k3s/{serving,client}-kubelet.crt DER CSR in, certificate + CA chain out (node password)
  /v1-k3s/{server-bootstrap,encrypt/status}                          server routes
  /api/v1/nodes[/<name>]               the apiserver part: a kubelet (client cert) makes its Node

Modes: ca_kind "single" (K3s default) or "bundle" (custom root + intermediate CA);
named=False serves a certificate that names no address a client uses; phases (seconds
from the first request, or `set_phase`): cacerts_error (5xx on /cacerts), apiserver_down
(Bearer -> 403, other paths -> 503), core_not_ready (readyz 503), throttle (429).
Admission (admission.py): max_inflight requests at once on agent and apiserver routes, the
rest 429 with `Retry-After: retry_after`; each admitted one held `service_time` seconds;
`server.admission.stats()` has the peak in flight and the refused count.

Python API:
    with K3sTestServer(port=0, state_dir=path) as server:
        server.url / server.guest_url   https://127.0.0.1:<port> / https://10.0.2.2:<port>
        server.mint_token(form)         server (K10..::server:pw), node, bootstrap (K10..::id.secret),
                                        bare-bootstrap, short
        server.create_bootstrap_token(ttl)  a new `<id>.<secret>`, like `k3s token create`
        server.set_password(pw)         change the token password (a token added later)
        server.registered_nodes()       names the apiserver holds a Node for, in order
        server.kube_objects.add_pod(Pod(...))  a pod on a node (kubeobjects.py), for drains
        server.add_etcd_member(node)    with etcd=True: a member, and its Node (etcd.py)
        server.etcd_members()           member name -> peer URL
        server.set_down(True/False)     stop listening / listen again on the same port
        server.requests                 (method, path, authorized?) of every request seen
CA, passwords, bootstrap tokens and nodes persist in `state_dir`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import socket
import ssl
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from builder.testserver import etcd as members
from builder.testserver import kubeapi, kubeobjects, rules
from builder.testserver.admission import Admission
from builder.testserver.ca import CertificateAuthority, ServerCA, key_pem, name
from builder.testserver.handler import Handler
from builder.testserver.listening import GUEST_HOST, Listening
from builder.util.atomic import write_atomic

TOKEN_FORMS = ("server", "node", "bootstrap", "bare-bootstrap", "short")
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


class K3sTestServer(Listening):
    def __init__(
        self,
        port: int = 0,
        state_dir: Path | None = None,
        host: str = "127.0.0.1",
        extra_sans: tuple[str, ...] = (),
        ca_kind: str = "single",
        named: bool = True,
        phases: dict[str, float] | None = None,
        cacerts_error_code: int = 503,
        max_inflight: int = 0,
        service_time: float = 0.0,
        retry_after: int = 1,
        etcd: bool = False,
    ) -> None:
        self._tmp = None if state_dir else tempfile.TemporaryDirectory(prefix="pifleet-k3s-")
        self.state_dir = Path(state_dir or self._tmp.name)  # type: ignore[union-attr]
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.ca = ServerCA(self.state_dir, ca_kind)
        self.client_ca = CertificateAuthority(self.state_dir, "client-ca")
        self.password = self._load_password()
        self.phases = rules.Phases(dict(phases or {}))
        self.cacerts_error_code = cacerts_error_code
        self.admission = Admission(max_inflight, service_time, retry_after)
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self.etcd = etcd  # managed etcd: server-bootstrap and /db/info answer (etcd.py)
        store = kubeapi.NodeStore()
        self.kube_objects = kubeobjects.Objects(store, self)
        self.kube = kubeapi.KubeApi(store, self._admin_token(), self.kube_objects.answer)
        self._context = self._serving_context((host, "127.0.0.1", GUEST_HOST, *extra_sans), named)
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        handler = type("Handler", (Handler,), {"server_state": self})
        httpd = _Listener((self.host, self._port), handler)
        httpd.daemon_threads = True
        httpd.socket = self._context.wrap_socket(
            httpd.socket, server_side=True, do_handshake_on_connect=False
        )  # the handshake runs in the connection's thread (Handler.setup), as in Go
        self._port = httpd.server_address[1]
        self._httpd = httpd
        threading.Thread(target=httpd.serve_forever, name="k3s-test-server", daemon=True).start()
        self._write_kubeconfig()

    def set_phase(self, phase: str, seconds: float) -> None:
        self.phases.set(phase, seconds)

    def apiserver_up(self) -> bool:
        return not self.phases.active("apiserver_down")

    @property
    def server_ca(self) -> CertificateAuthority:
        """The CA that signs the serving certificate (k3s-server-ca)."""
        return self.ca.signer

    # -- tokens and records ----------------------------------------------------

    def mint_token(self, form: str = "server", *, short: bool = False, user: str = "") -> str:
        """A join token in one of TOKEN_FORMS (`short=True` and `user=` kept for old callers)."""
        if short:
            form = "short"
        elif user:
            form = user
        if form not in TOKEN_FORMS:
            raise ValueError(f"token form must be one of {', '.join(TOKEN_FORMS)}")
        if form == "short":
            return self.password
        if form in ("bootstrap", "bare-bootstrap"):
            token = self.create_bootstrap_token()
            return token if form == "bare-bootstrap" else f"K10{self.ca.ca_hash}::{token}"
        return f"K10{self.ca.ca_hash}::{form}:{self.password}"

    def create_bootstrap_token(self, ttl: float = 86400.0, token: str | None = None) -> str:
        """`k3s token create`: `<id>.<secret>` valid for `ttl` seconds (0: forever)."""
        if token is None:
            alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
            token = "".join(secrets.choice(alphabet) for _ in range(6)) + "."
            token += "".join(secrets.choice(alphabet) for _ in range(16))
        match = rules.BOOTSTRAP.match(token)
        if not match:
            raise ValueError("a bootstrap token is [a-z0-9]{6}.[a-z0-9]{16}")
        with self._lock:
            registry = self._registry()
            tokens = registry.setdefault("bootstrap", {})
            if match.group(1) in tokens:
                raise ValueError(f'a token with id "{match.group(1)}" already exists')
            tokens[match.group(1)] = [match.group(2), time.time() + ttl if ttl else 0.0]
            self._save_registry(registry)
        return token

    def set_password(self, password: str) -> None:
        """The cluster token's password from now on (and after a restart)."""
        write_atomic(self.state_dir / "token-password", password.encode() + b"\n", 0o600)
        self.password = password

    def authenticator(self) -> rules.Authenticator:
        raw = self._registry().get("bootstrap", {})
        tokens = {key: (str(v[0]), float(v[1])) for key, v in raw.items()}
        return rules.Authenticator({"node": self.password, "server": self.password}, tokens)

    @property
    def ca_hash(self) -> str:
        return self.ca.ca_hash

    def registered_nodes(self) -> list[str]:
        return list(self._registry().get("nodes", []))

    def node_password_hash(self, node: str) -> str | None:
        known: dict[str, str] = self._registry().get("passwords", {})
        return known.get(node)

    def preregister(self, node: str, password: str) -> None:
        """Make the server already know `node` with `password` (a node that joined before)."""
        with self._lock:
            registry = self._registry()
            registry.setdefault("passwords", {})[node] = _hash(password)
            self._save_registry(registry)

    def create_node(self, node: str) -> bool:
        """The apiserver stores Node `node`; False when it existed."""
        with self._lock:
            registry = self._registry()
            nodes = registry.setdefault("nodes", [])
            if node in nodes:
                return False
            nodes.append(node)
            self._save_registry(registry)
        self.kube.store.register(node)
        return True

    def delete_node(self, node: str) -> bool:
        """The Node is deleted: gone from the apiserver, and its etcd member with it."""
        with self.kube.store.lock:
            record = self.kube.store.nodes.get(node)
            member = members.removed_member(record.labels, record.annotations) if record else None
        with self._lock:
            self._save_registry(members.forget(self._registry(), node, member))
        return self.kube.store.remove(node)

    def forget_node_password(self, node: str) -> bool:
        """The node-password Secret is deleted: the next password for `node` is accepted."""
        with self._lock:
            registry = self._registry()
            known = registry.setdefault("passwords", {}).pop(node, None) is not None
            self._save_registry(registry)
        return known

    def etcd_members(self) -> dict[str, str]:
        return dict(members.members(self._registry()))

    def add_etcd_member(self, node: str, peer: str = "", member: str = "") -> str:
        """A member of the cluster's etcd for server `node` (a new name unless `member`), and
        the Node that server registers, labelled and annotated as K3s does."""
        member = member or members.member_name(node)
        peer = peer or "https://127.0.0.1:2380"
        with self._lock:
            self._save_registry(members.add(self._registry(), node, member, peer))
        labels, annotations = members.node_metadata(member, peer)
        self.kube.store.register(node, labels)
        with self.kube.store.lock:
            self.kube.store.nodes[node].annotations.update(annotations)
        return member

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
        data = kubeapi.kubeconfig(self.url, self.ca.cacerts, self.kube.admin_token)
        write_atomic(self.state_dir / "kubeconfig.yaml", data, 0o600)

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig.yaml"

    def record(self, handler: Any, route: rules.Route, denied: int) -> None:
        headers = handler.headers
        authorized = route.kind != "open" and denied == 0
        had = headers.get("Authorization") is not None
        entry = Request(
            handler.command, handler.path, authorized, had, headers.get("k3s-Node-Name")
        )
        with self._lock:
            self.requests.append(entry)

    # -- certificates ----------------------------------------------------------

    def sign_node_csr(self, kind: str, node: str, password: str, der: bytes) -> tuple[int, bytes]:
        """(status, body) for a serving/client kubelet CSR from node `node`."""
        try:
            csr = x509.load_der_x509_csr(der)
        except ValueError:
            return 400, b"invalid certificate signing request\n"
        if not csr.is_signature_valid:
            return 400, b"certificate signing request signature is invalid\n"
        with self._lock:
            registry = self._registry()
            known = registry.setdefault("passwords", {}).get(node)
            if known is not None and not hmac.compare_digest(known, _hash(password)):
                return 403, (REJECTED + "\n").encode()
            registry["passwords"][node] = _hash(password)
            self._save_registry(registry)
        if kind == "client":
            subject = x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node}"),
                ]
            )
            usage, ca = ExtendedKeyUsageOID.CLIENT_AUTH, self.client_ca
            cert = ca.issue(subject, csr.public_key(), usage)
            chain = ca.pem
        else:
            sans: list[x509.GeneralName] = [x509.DNSName(node), x509.DNSName("localhost")]
            cert = self.server_ca.issue(
                name(node), csr.public_key(), ExtendedKeyUsageOID.SERVER_AUTH, sans
            )
            chain = self.ca.cacerts
        return 200, cert.public_bytes(serialization.Encoding.PEM) + chain

    # -- internals -------------------------------------------------------------

    def _load_password(self) -> str:
        path = self.state_dir / "token-password"
        if not path.exists():
            write_atomic(path, (secrets.token_hex(16) + "\n").encode(), 0o600)
        return path.read_text().strip()

    def _serving_context(self, hosts: tuple[str, ...], named: bool) -> ssl.SSLContext:
        chain, key = self.ca.serving_chain(hosts, named)
        cert_file = self.state_dir / "serving.crt"
        key_file = self.state_dir / "serving.key"
        write_atomic(cert_file, chain, 0o644)
        write_atomic(key_file, key_pem(key), 0o600)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        context.load_verify_locations(cadata=self.client_ca.pem.decode())
        context.verify_mode = ssl.CERT_OPTIONAL  # kubelets present client-ca certificates
        return context

    def _registry(self) -> dict[str, Any]:
        path = self.state_dir / "registry.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _save_registry(self, registry: dict[str, Any]) -> None:
        data = json.dumps(registry, indent=2, sort_keys=True).encode()
        write_atomic(self.state_dir / "registry.json", data, 0o600)


class _Listener(ThreadingHTTPServer):
    request_queue_size = 4096  # a storm of connects waits in the backlog (Go: somaxconn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a failed handshake is the client's
            super().handle_error(request, client_address)


def _hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
