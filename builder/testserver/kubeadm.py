"""A kubeadm control plane for tests (not a Kubernetes): what `kubeadm join` and a kubelet's
TLS bootstrap touch, over real TLS with CAs made by `cryptography` (ca.py).

  GET  /api/v1/namespaces/kube-public/configmaps/cluster-info   anonymous: kubeconfig + JWS
  POST /apis/certificates.k8s.io/v1/certificatesigningrequests  bootstrap token or node
  GET  /apis/certificates.k8s.io/v1/certificatesigningrequests/<name>  status.certificate
  POST /api/v1/nodes, GET /api/v1/nodes/<name>                  the node's client certificate
  /version /healthz /livez /readyz                              anyone; /api, /apis: authenticated

Every rule (authentication, RBAC, the node authorizer and NodeRestriction, CSR approval and
signing, the bootstrapsigner's JWS) is in kubeadm_rules.py's table, with its source file.
One cluster CA (kubeadm's ca.crt, ECDSA here) signs the serving certificate and the kubelet
client certificates, and verifies client certificates, as kubeadm sets it up.

Python API:
    with KubeadmTestServer(port=0) as server:
        server.url / server.guest_url      https://127.0.0.1:<port> / https://10.0.2.2:<port>
        server.endpoint                    127.0.0.1:<port> (kubeadm's apiServerEndpoint)
        server.ca_pem, server.ca_hash      the cluster CA and its pin, sha256:<SPKI hex>
        server.mint_token(ttl=86400)       a new `<id>.<secret>` (ttl<0: already expired)
        server.wrong_token(token)          the same id with another secret
        server.forge(jws_secret=None)      a man-in-the-middle: its own CA in cluster-info and
                                           in TLS; the JWS with the real secrets, or with
                                           `jws_secret` guessed for each id
        server.relay_other_certificate()   TLS with another CA, cluster-info the real one
        KubeadmTestServer(named=False)     a serving certificate naming no address clients use
        server.change_kubeconfig_after(n)  after n cluster-info answers, another (re-signed)
        server.requests                    (method, path, who, authorization sent?, status)
        server.nodes(), server.csrs()      what was registered
        server.set_down(True/False)        stop listening / listen again on the same port
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
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
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from builder.testserver import kubeadm_objects as objects
from builder.testserver import kubeadm_rules as rules
from builder.testserver.ca import CertificateAuthority, key_pem, name
from builder.testserver.kubeadm_handler import KubeadmHandler
from builder.testserver.listening import GUEST_HOST, Listening
from builder.util.atomic import write_atomic

TOKEN_CHARS = "0123456789abcdefghijklmnopqrstuvwxyz"  # cluster-bootstrap helpers.go
APISERVER_SANS = ("kubernetes", "kubernetes.default", "kubernetes.default.svc")


@dataclass(frozen=True)
class KubeadmRequest:
    method: str
    path: str
    who: str  # the authenticated user (system:anonymous, system:bootstrap:<id>, ...), "-" on 401
    authorization: bool  # whether an Authorization header was sent
    status: int


@dataclass(frozen=True)
class BootstrapTokenSecret:
    """A `bootstrap-token-<id>` Secret in kube-system, as kubeadm creates it."""

    secret: str
    expires: float | None
    usages: frozenset[str] = frozenset({"signing", "authentication"})
    groups: tuple[str, ...] = (rules.KUBEADM_TOKEN_GROUP,)

    def valid_for(self, usage: str) -> bool:
        fresh = self.expires is None or self.expires > time.time()
        return fresh and usage in self.usages


def spki_pin(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def random_part(length: int) -> str:
    return "".join(secrets.choice(TOKEN_CHARS) for _ in range(length))


class KubeadmTestServer(Listening):
    def __init__(
        self,
        port: int = 0,
        state_dir: Path | None = None,
        host: str = "127.0.0.1",
        extra_sans: tuple[str, ...] = (),
        kubeconfig_form: str = "yaml",
        named: bool = True,
    ) -> None:
        self._tmp = None if state_dir else tempfile.TemporaryDirectory(prefix="pifleet-kubeadm-")
        self.state_dir = Path(state_dir or self._tmp.name)  # type: ignore[union-attr]
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.kubeconfig_form = kubeconfig_form
        self.ca = CertificateAuthority(self.state_dir, "kubernetes-ca")
        self.attacker_ca = CertificateAuthority(self.state_dir, "attacker-ca")
        self.store = objects.Store(self.ca)
        self.requests: list[KubeadmRequest] = []
        self._tokens: dict[str, BootstrapTokenSecret] = {}
        self._lock = threading.Lock()
        # named=False: a certificate that names no address a client uses (only in-cluster names)
        hosts = (host, "127.0.0.1", GUEST_HOST, "localhost", *extra_sans) if named else ()
        self._contexts = {
            "cluster": self._tls(self.ca, hosts, "cluster"),
            "attacker": self._tls(self.attacker_ca, hosts, "attacker"),
        }
        self._forged: tuple[bool, str | None] | None = None
        self._relay = False
        self._change_after: int | None = None
        self._answered = 0
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        handler = type("Handler", (KubeadmHandler,), {"server_state": self})
        httpd = _Listener((self.host, self._port), handler)
        httpd.daemon_threads = True
        self._port = httpd.server_address[1]
        self._httpd = httpd
        threading.Thread(
            target=httpd.serve_forever, args=(0.05,), name="kubeadm-test-server", daemon=True
        ).start()

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self._port}"

    @property
    def ca_pem(self) -> bytes:
        return self.ca.pem

    @property
    def ca_hash(self) -> str:
        return spki_pin(self.ca.cert)

    def admin_kubeconfig(self) -> Path:
        """`<state_dir>/admin.conf` (0600), as `kubeadm init` writes it: the cluster's CA and a
        client certificate of kubernetes-admin in kubeadm:cluster-admins (cluster-admin)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, rules.CLUSTER_ADMINS),
            x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes-admin"),
        ])  # fmt: skip
        cert = self.ca.issue(subject, key.public_key(), ExtendedKeyUsageOID.CLIENT_AUTH)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )  # fmt: skip
        path = self.state_dir / "admin.conf"
        write_atomic(path, objects.admin_kubeconfig(self.url, self.ca_pem, cert, key_pem), 0o600)
        return path

    # -- tokens and modes --------------------------------------------------------

    def mint_token(self, ttl: float | None = 86400.0, usages: tuple[str, ...] = ()) -> str:
        """A new bootstrap token, as `kubeadm token create` makes it (ttl None: no expiry)."""
        token_id, secret = random_part(6), random_part(16)
        expires = None if ttl is None else time.time() + ttl
        record = BootstrapTokenSecret(secret, expires)
        if usages:
            record = BootstrapTokenSecret(secret, expires, frozenset(usages))
        with self._lock:
            self._tokens[token_id] = record
        return f"{token_id}.{secret}"

    def wrong_token(self, token: str) -> str:
        """`token`'s id with a secret that is not its own."""
        token_id, _, secret = token.partition(".")
        while True:
            other = random_part(16)
            if other != secret:
                return f"{token_id}.{other}"

    def token_secrets(self) -> list[str]:
        with self._lock:
            return [record.secret for record in self._tokens.values()]

    def forge(self, jws_secret: str | None = None) -> None:
        """Answer as a man-in-the-middle with its own CA (module doc)."""
        self._forged = (True, jws_secret)

    def relay_other_certificate(self, on: bool = True) -> None:
        self._relay = on

    def change_kubeconfig_after(self, count: int) -> None:
        self._change_after = count

    def serving_context(self) -> ssl.SSLContext:
        attacker = self._forged is not None or self._relay
        return self._contexts["attacker" if attacker else "cluster"]

    # -- authentication and records ----------------------------------------------

    def authenticate(
        self, authorization: str | None, subject: tuple[str, tuple[str, ...]] | None
    ) -> rules.Caller:
        """x509 first, then a bootstrap Bearer token, else anonymous (kubeadm_rules.py)."""
        if subject is not None:
            common, orgs = subject
            return rules.Caller(common, frozenset(orgs) | {rules.AUTHENTICATED})
        scheme, _, value = (authorization or "").partition(" ")
        if authorization is None or scheme.lower() != "bearer":
            return rules.Caller(rules.ANONYMOUS, frozenset({rules.UNAUTHENTICATED}))
        refused = rules.Caller("", frozenset(), 401)
        match = rules.BEARER.match(value.strip())
        if not match:
            return refused
        with self._lock:
            record = self._tokens.get(match[1])
        if record is None or not hmac.compare_digest(record.secret, match[2]):
            return refused
        if not record.valid_for("authentication"):
            return refused
        groups = frozenset({rules.BOOTSTRAPPERS, *record.groups, rules.AUTHENTICATED})
        return rules.Caller("system:bootstrap:" + match[1], groups)

    def record(self, method: str, path: str, who: str, authorization: bool, status: int) -> None:
        with self._lock:
            self.requests.append(KubeadmRequest(method, path, who, authorization, status))

    def nodes(self) -> list[str]:
        with self.store.lock:
            return list(self.store.nodes)

    def csrs(self) -> dict[str, dict[str, Any]]:
        with self.store.lock:
            return dict(self.store.csrs)

    # -- cluster-info ------------------------------------------------------------

    def cluster_info_data(self) -> dict[str, str]:
        """The ConfigMap's data as the bootstrapsigner leaves it (or as a forger would)."""
        with self._lock:
            self._answered += 1
            changed = self._change_after is not None and self._answered > self._change_after
            tokens = {i: t for i, t in self._tokens.items() if t.valid_for("signing")}
        ca = self.attacker_ca if self._forged is not None else self.ca
        server = "https://203.0.113.7:6443" if changed else self.url
        content = objects.cluster_info_kubeconfig(server, ca.pem, self.kubeconfig_form)
        data = {"kubeconfig": content}
        for token_id, record in sorted(tokens.items()):
            key = self._forged[1] if self._forged and self._forged[1] else record.secret
            data["jws-kubeconfig-" + token_id] = rules.detached_jws(content.encode(), token_id, key)
        return data

    def cluster_info_body(self) -> bytes:
        return objects.configmap("cluster-info", "kube-public", self.cluster_info_data())

    # -- TLS -------------------------------------------------------------------

    def _tls(self, ca: CertificateAuthority, hosts: tuple[str, ...], stem: str) -> ssl.SSLContext:
        """kube-apiserver's serving certificate from `ca`, and client certificates verified
        against the cluster CA (--client-ca-file=ca.crt)."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in APISERVER_SANS]
        for item in hosts:
            sans.append(_general_name(item))
        leaf = ca.issue(
            name("kube-apiserver"), key.public_key(), ExtendedKeyUsageOID.SERVER_AUTH, sans
        )
        cert_file = self.state_dir / f"apiserver-{stem}.crt"
        key_file = self.state_dir / f"apiserver-{stem}.key"
        write_atomic(cert_file, leaf.public_bytes(serialization.Encoding.PEM), 0o644)
        write_atomic(key_file, key_pem(key), 0o600)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        context.load_verify_locations(cadata=self.ca.pem.decode())
        context.verify_mode = ssl.CERT_OPTIONAL
        return context


def _general_name(item: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(item))
    except ValueError:
        return x509.DNSName(item)


class _Listener(ThreadingHTTPServer):
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a failed handshake is the client's
            super().handle_error(request, client_address)
