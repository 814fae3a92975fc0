"""Many first-boot agents at once against one K3s test server, as threads of this process.

What is REAL agent code: firstboot.machine.Agent, unchanged, on its own device root
(tests/agent_helpers.make_device) for load -> network -> clock -> verify -> configure and
cleanup: its /cacerts fetch, CA pin check, token proof on readyz, its Backoff and its
Retry-After handling, its state file and its K3s config files.

What is the K3S STAND-IN's work instead of K3s (the `start` state): the agent would start
k3s-agent.service; here `start` makes, in the same thread, the requests the stand-in
(tests/fixtures/k3s-standin) makes, with its retry periods: per attempt GET /cacerts, GET
/v1-k3s/config, client-ca.crt, server-ca.crt, then POST DER CSRs to serving-kubelet.crt and
client-kubelet.crt with k3s-Node-Name/-Password headers, every `period`..2 `period`
on any error (K3s config.Get: 5-10 s, Retry-After ignored); then the kubelet's POST
/api/v1/nodes + GET with its new client certificate, every 0.4 `period`. CSRs are made with
`cryptography` here (the stand-in uses the openssl CLI). No process, no systemctl.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import random
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from firstboot import joinconfig
from firstboot.machine import Agent
from firstboot.paths import Root
from firstboot.report import Reporter
from firstboot.retry import Backoff

JOIN_CONFIG = "/etc/pifleet/join.json"


class Stopped(BaseException):
    """The storm's deadline passed: unwind the agent thread (escapes its except clauses)."""


@dataclass
class Outcome:
    index: int
    verified: float | None = None  # seconds from the storm's start
    joined: float | None = None
    code: int | None = None
    error: str = ""


class StormAgent(Agent):
    def __init__(self, root: Path, storm: Storm, outcome: Outcome) -> None:
        super().__init__(Root(str(root)), JOIN_CONFIG, Reporter(io.StringIO()))
        self.storm, self.outcome, self.device_root = storm, outcome, root
        self.sleep = storm.sleep

    def backoff(self, cap: float | None = None) -> Backoff:
        backoff = super().backoff(cap)
        backoff.jitter = self.storm.jitter
        return backoff

    def do_verify(self) -> str:
        following = super().do_verify()
        self.outcome.verified = time.monotonic() - self.storm.start
        return following

    def do_start(self) -> str:
        name = str(self.state.node_name)
        token = self.token().authorization("node")
        password = _node_password(self.device_root)
        cacerts = self.storm.config_get(token, name, password)
        self.storm.register_node(cacerts, name)
        return "cleanup"


class Storm:
    def __init__(self, url: str, jitter: bool, period: float, deadline: float) -> None:
        parts = urlsplit(url)
        self.host, self.port = str(parts.hostname), int(parts.port or 443)
        self.jitter, self.period, self.deadline = jitter, period, deadline
        self.start = time.monotonic()
        self.stop = threading.Event()
        self.keys = _Keys()
        self.latencies: list[tuple[int, float]] = []  # (status, seconds) of each request

    def sleep(self, seconds: float) -> None:
        left = self.start + self.deadline - time.monotonic()
        if self.stop.wait(min(seconds, max(left, 0.0))) or seconds > left:
            raise Stopped()

    def request(
        self,
        method: str,
        path: str,
        context: ssl.SSLContext,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection(self.host, self.port, context=context, timeout=30)
        start = time.monotonic()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            answer = response.status, response.read()
            self.latencies.append((answer[0], time.monotonic() - start))
            return answer
        finally:
            conn.close()

    def config_get(self, auth: str, name: str, password: str) -> bytes:
        """The stand-in's config.Get until it has both kubelet certificates; the CA bundle."""
        while True:
            try:
                return self._config_attempt(auth, name, password)
            except (OSError, http.client.HTTPException, RuntimeError):
                self.sleep(self.period * (1 + (random.random() if self.jitter else 0.5)))

    def _config_attempt(self, auth: str, name: str, password: str) -> bytes:
        status, cacerts = self.request("GET", "/cacerts", _insecure())
        _expect(status, 200)
        pinned = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        pinned.check_hostname = False
        pinned.load_verify_locations(cadata=cacerts.decode())
        headers = {"Authorization": auth}
        for path in ("config", "client-ca.crt", "server-ca.crt"):
            _expect(self.request("GET", "/v1-k3s/" + path, pinned, headers)[0], 200)
        node = dict(headers, **{"k3s-Node-Name": name, "k3s-Node-Password": password})
        for kind, subject in (("serving", name), ("client", "system:node:" + name)):
            csr = self.keys.csr(name, kind, subject)
            status, body = self.request("POST", f"/v1-k3s/{kind}-kubelet.crt", pinned, node, csr)
            _expect(status, 200)
            self.keys.certs[(name, kind)] = body
        return cacerts

    def register_node(self, cacerts: bytes, name: str) -> None:
        """The kubelet creates its Node with its client certificate, then reads it back."""
        kubelet = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        kubelet.check_hostname = False
        kubelet.load_verify_locations(cadata=cacerts.decode())
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp, "c.crt"), Path(tmp, "c.key")
            cert.write_bytes(self.keys.certs[(name, "client")])
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(self.keys.key_pem(name, "client"))
            kubelet.load_cert_chain(cert, key)
        body = json.dumps({"kind": "Node", "apiVersion": "v1", "metadata": {"name": name}})
        while True:
            try:
                status, _ = self.request("POST", "/api/v1/nodes", kubelet, {}, body.encode())
                _expect(status, 201, 409)
                _expect(self.request("GET", "/api/v1/nodes/" + name, kubelet)[0], 200)
                return
            except (OSError, http.client.HTTPException, RuntimeError):
                self.sleep(self.period * 0.4)


class _Keys:
    """Each node's kubelet keys and certificates (K3s keeps them under agent/)."""

    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], ec.EllipticCurvePrivateKey] = {}
        self.certs: dict[tuple[str, str], bytes] = {}

    def csr(self, name: str, kind: str, subject: str) -> bytes:
        key = self.keys.setdefault((name, kind), ec.generate_private_key(ec.SECP256R1()))
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, subject)]
        if kind == "client":
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"))
        request = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
        return request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    def key_pem(self, name: str, kind: str) -> bytes:
        return self.keys[(name, kind)].private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _insecure() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def _expect(status: int, *ok: int) -> None:
    if status not in ok:
        raise RuntimeError(f"answered {status}")


def _node_password(root: Path) -> str:
    """K3s's /etc/rancher/node/password: 32 hex chars, 0600 from its first byte."""
    target = root / "etc/rancher/node/password"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(16).hex() + "\n")
    return target.read_text().strip()


def storm_join_config(url: str, backoff_cap: float = 60.0) -> joinconfig.JoinConfig:
    """The device's join config for a storm: the shipped defaults, one verdict then exit."""
    return joinconfig.JoinConfig(
        server=url,
        hostname_pattern="edge-{serial}",
        build_time=1_700_000_000,
        backoff_cap=backoff_cap,
        recheck_interval=0.0,
    )


def run_storm(
    url: str,
    roots: list[Path],
    *,
    first_index: int = 0,
    jitter: bool = True,
    period: float = 1.0,
    deadline: float = 600.0,
    latencies: list[tuple[int, float]] | None = None,
) -> list[Outcome]:
    """Start one agent thread per root at the same moment; wait for all (or the deadline).
    `latencies` gets (status, seconds) of the stand-in's requests."""
    storm = Storm(url, jitter, period, deadline)
    outcomes = [Outcome(first_index + i) for i in range(len(roots))]

    def one(root: Path, outcome: Outcome) -> None:
        try:
            outcome.code = StormAgent(root, storm, outcome).run()
            if outcome.code == 0:
                outcome.joined = time.monotonic() - storm.start
        except Stopped:
            outcome.error = "deadline"
        except Exception as exc:  # reported, counted as not joined
            outcome.error = f"{type(exc).__name__}: {exc}"

    threads = [
        threading.Thread(target=one, args=pair, daemon=True)
        for pair in zip(roots, outcomes, strict=True)
    ]
    storm.start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if latencies is not None:
        latencies.extend(storm.latencies)
    return outcomes


__all__ = ["Outcome", "run_storm"]
