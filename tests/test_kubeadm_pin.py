"""`pifleet token pin --kind kubeadm` against a tiny real HTTPS server on 127.0.0.1 that serves
kubeadm's cluster-info ConfigMap: the pin shown is kubeadm's (sha256 over the CA's
SubjectPublicKeyInfo) and equals what the openssl command on the control plane prints; no
request carries credentials; the fleet file's `ca_cert_hashes` entry it writes loads."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import re
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from builder.config.clusterinfo import CLUSTER_INFO
from builder.config.fleet import load
from builder.config.pin import OPENSSL_ANY, OPENSSL_RSA
from firstboot import x509 as device_x509
from tests.conftest import fleet_yaml, pifleet
from tests.layouts import elf_for

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
DAY = datetime.timedelta(days=1)


def certificate(name: str, key: Key, issuer: x509.Certificate | None, signer: Key) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(
            issuer.subject if issuer else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        )
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + DAY)
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    else:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, False)
    return builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@dataclass
class Cluster:
    """A CA (`ca_pem`) and an API server certificate it signed, written under `folder`."""

    folder: Path
    ecdsa: bool = False
    ca_pem: bytes = b""
    tls: tuple[Path, Path] = (Path(), Path())

    def __post_init__(self) -> None:
        def new_key() -> Key:
            return (
                ec.generate_private_key(ec.SECP256R1())
                if self.ecdsa
                else rsa.generate_private_key(65537, 2048)
            )

        ca_key, server_key = new_key(), new_key()
        self.ca_pem = certificate("kubernetes", ca_key, None, ca_key)
        ca = x509.load_pem_x509_certificate(self.ca_pem)
        server_pem = certificate("kube-apiserver", server_key, ca, ca_key)
        self.folder.mkdir(parents=True, exist_ok=True)
        cert, key = self.folder / "apiserver.crt", self.folder / "apiserver.key"
        cert.write_bytes(server_pem)
        key.write_bytes(
            server_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (self.folder / "ca.crt").write_bytes(self.ca_pem)
        self.tls = (cert, key)


def cluster_info(ca_pem: bytes, server: str = "https://127.0.0.1:6443") -> bytes:
    """kube-public/cluster-info as kubeadm writes it: a kubeconfig with one unnamed cluster."""
    kubeconfig = yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "",
                    "cluster": {
                        "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                        "server": server,
                    },
                }
            ],
            "contexts": [],
            "users": [],
            "preferences": {},
            "current-context": "",
        }
    )
    data = {"kubeconfig": kubeconfig, "jws-kubeconfig-abcdef": "e30..c2ln"}
    return json.dumps(
        {
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {"name": "cluster-info", "namespace": "kube-public"},
            "data": data,
        }
    ).encode()


@dataclass
class ApiServer:
    """HTTPS on 127.0.0.1 with `tls`; answers GET cluster-info with `answers` in turn (the last
    one from then on), and records every request's path and headers."""

    tls: tuple[Path, Path]
    answers: list[tuple[int, bytes]] = field(default_factory=list)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                status, body = owner.answers[0] if len(owner.answers) == 1 else owner.answers.pop(0)
                if self.path != CLUSTER_INFO:
                    status, body = 404, b'{"kind":"Status","code":404}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*self.tls)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(params=[False, True], ids=["rsa", "ecdsa"], scope="module")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    return Cluster(tmp_path_factory.mktemp("pki"), ecdsa=request.param)


@pytest.fixture
def server(cluster: Cluster) -> Iterator[ApiServer]:
    api = ApiServer(cluster.tls, [(200, cluster_info(cluster.ca_pem))])
    yield api
    api.close()


def openssl_pin(ca_file: Path, command: str) -> str:
    """The figure the control plane's operator gets: the docs' command, run for real."""
    shell = command.replace("/etc/kubernetes/pki/ca.crt", str(ca_file))
    done = subprocess.run(shell, shell=True, capture_output=True, text=True, check=True)
    return "sha256:" + done.stdout.strip().rsplit(" ", 1)[-1]


def pins_in(text: str) -> list[str]:
    return re.findall(r"kubeadm pin (sha256:[0-9a-f]{64})", text)


def test_the_pin_is_kubeadms_and_openssl_agrees(
    cluster: Cluster, server: ApiServer, tmp_path: Path
) -> None:
    done = pifleet("token", "pin", server.url, "--kind", "kubeadm", cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    [pin] = pins_in(done.stdout)
    command = OPENSSL_ANY if cluster.ecdsa else OPENSSL_RSA
    assert f"compare the hex digits on the control plane: {command}" in done.stdout
    assert pin == openssl_pin(cluster.folder / "ca.crt", command)
    assert pin == openssl_pin(cluster.folder / "ca.crt", OPENSSL_ANY)
    spki = device_x509.parse(cluster.ca_pem).spki  # the raw SPKI the device's agent reads
    assert pin == "sha256:" + hashlib.sha256(spki).hexdigest()
    assert f'    - "{pin}"' in done.stdout and "  kind: kubeadm" in done.stdout
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_no_credentials_reach_the_server(server: ApiServer, tmp_path: Path) -> None:
    done = pifleet("token", "pin", server.url, "--kind", "kubeadm", cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [path for path, _ in server.seen] == [
        CLUSTER_INFO,
        CLUSTER_INFO,
    ]  # insecure, then pinned
    for _path, headers in server.seen:
        assert "authorization" not in headers and "cookie" not in headers, headers


def test_the_entry_written_is_what_the_fleet_file_takes(
    cluster: Cluster, server: ApiServer, tmp_path: Path
) -> None:
    args = ("token", "pin", server.url, "--kind", "kubeadm", "-o", "pin.yaml", "--yes")
    done = pifleet(*args, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    written = tmp_path / "pin.yaml"
    assert written.stat().st_mode & 0o777 == 0o644  # a pin is public
    entry = yaml.safe_load(written.read_text())["cluster"]
    assert entry["ca_cert_hashes"] == pins_in(done.stdout)
    hashes_line = json.dumps(entry["ca_cert_hashes"])
    text = (
        f"cluster:\n  kind: kubeadm\n  server: {server.url.removeprefix('https://')}\n"
        f"  token_file: token\n  ca_cert_hashes: {hashes_line}\n"
    )
    binaries = "".join(
        f"  {name}: {elf_for('arm64')}\n" for name in ("kubeadm", "kubelet", "kubectl")
    )
    (tmp_path / "fleet.yaml").write_text(
        fleet_yaml(k3s="", cluster=text, kubernetes="kubernetes:\n" + binaries)
    )
    assert list(load(tmp_path / "fleet.yaml").cluster.ca_cert_hashes) == entry["ca_cert_hashes"]


def refused(tmp_path: Path, *args: str, code: int = 2) -> str:
    done = pifleet("token", "pin", *args, cwd=tmp_path, timeout=60)
    assert done.returncode == code, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_kubeadm_takes_no_token_and_no_server_role(server: ApiServer, tmp_path: Path) -> None:
    line = refused(tmp_path, server.url, "--kind", "kubeadm", "--token-file", "t")
    assert "--token-file: not with --kind kubeadm" in line
    line = refused(tmp_path, server.url, "--kind", "kubeadm", "--role", "server")
    assert "--role server: not with --kind kubeadm" in line
    line = refused(tmp_path, server.url, "--kind", "kubeadm", "-o", "pin.yaml")
    assert "not on a terminal: give --yes" in line
    assert server.seen[-1:] and not (tmp_path / "pin.yaml").exists()


def test_k3s_still_needs_its_token_and_output(tmp_path: Path) -> None:
    line = refused(tmp_path, "https://127.0.0.1:9", "-o", "pinned")
    assert "--token-file: required with --kind k3s" in line
    line = refused(tmp_path, "https://127.0.0.1:9", "--token-file", "t")
    assert "-o/--output: required with --kind k3s" in line


@pytest.mark.parametrize(
    ("status", "body", "needle"),
    [
        (401, b"{}", "answered 401: the API server refuses anonymous requests"),
        (403, b"{}", "answered 403: anonymous may not read cluster-info"),
        (404, b"{}", "answered 404: no kube-public/cluster-info ConfigMap"),
        (503, b"{}", "answered 503; try again later"),
        (200, b"<html>", "is not a ConfigMap with data.kubeconfig"),
        (200, b'{"data": {"kubeconfig": "clusters: [\\n"}}', "its kubeconfig is not YAML"),
        (200, b'{"data": {"kubeconfig": "clusters: []"}}', "no unnamed cluster"),
        (
            200,
            b'{"data": {"kubeconfig": "clusters: [{name: \\"\\", cluster: {}}]"}}',
            "its cluster has no certificate-authority-data",
        ),
    ],
)
def test_a_server_that_is_not_kubeadm_is_one_line(
    server: ApiServer, tmp_path: Path, status: int, body: bytes, needle: str
) -> None:
    server.answers = [(status, body)]
    line = refused(tmp_path, server.url, "--kind", "kubeadm", code=1)
    assert line.startswith(f"pifleet: error: {server.url}: ") and needle in line, line


def test_a_ca_that_did_not_sign_the_server_is_a_man_in_the_middle(
    server: ApiServer, tmp_path: Path
) -> None:
    other = Cluster(tmp_path / "other")
    server.answers = [(200, cluster_info(other.ca_pem))]
    line = refused(tmp_path, server.url, "--kind", "kubeadm", "-o", "pin.yaml", "--yes", code=1)
    assert "does not verify against the CA in its own cluster-info" in line
    assert not (tmp_path / "pin.yaml").exists()


def test_cluster_info_that_changes_between_reads_is_refused(
    cluster: Cluster, server: ApiServer, tmp_path: Path
) -> None:
    first = cluster_info(cluster.ca_pem)
    server.answers = [(200, first), (200, cluster_info(cluster.ca_pem, "https://10.0.0.9:6443"))]
    line = refused(tmp_path, server.url, "--kind", "kubeadm", code=1)
    assert "cluster-info changed between two reads" in line
