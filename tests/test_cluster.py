"""`pifleet cluster init/show`: K3s's custom CA layout, the K10 hash as K3s computes it.

The hash is held against an independent computation (`openssl x509 -fingerprint
-sha256` of the root, which is what K3s's hashCA yields for a bundle), the chain
against `openssl verify`, and the layout against K3s's
contrib/util/generate-custom-ca-certs.sh (key types, validity, CA constraints).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from builder.cluster.ca import generate
from builder.cluster.cahash import k3s_ca_hash
from tests.cluster_fleet import CREATE, DEVICES
from tests.conftest import fleet_yaml, pifleet


def openssl_fingerprint(pem: bytes, tmp: Path) -> str:
    path = tmp / "cert.pem"
    path.write_bytes(pem)
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.strip().split("=", 1)[1].replace(":", "").lower()


@pytest.fixture
def cluster_fleet(tmp_path: Path) -> Path:
    (tmp_path / "fleet.yaml").write_text(fleet_yaml(cluster=CREATE, devices=DEVICES))
    return tmp_path


@pytest.fixture(scope="module")
def layout() -> dict[str, bytes]:
    return {f.path: f.data for f in generate()}


def test_init_writes_the_layout_pinned_tokens_and_modes(cluster_fleet: Path) -> None:
    done = pifleet("cluster", "init", "fleet.yaml", cwd=cluster_fleet)
    assert done.returncode == 0, done.stderr
    root = cluster_fleet / "cluster"
    tls = root / "tls"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for kind in ("root", "intermediate", "client", "server", "request-header"):
        assert {p.name for p in tls.glob(f"{kind}-ca.*")} == {
            f"{kind}-ca.pem", f"{kind}-ca.crt", f"{kind}-ca.key"
        }  # fmt: skip
    assert {p.name for p in (tls / "etcd").iterdir()} == {
        f"{k}-ca.{s}" for k in ("peer", "server") for s in ("pem", "crt", "key")
    }
    secrets = [*tls.rglob("*.key"), tls / "service.key", root / "token", root / "agent-token"]
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in tls.rglob("*.crt"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path

    fingerprint = openssl_fingerprint((tls / "root-ca.pem").read_bytes(), cluster_fleet)
    assert f"K10 CA hash: {fingerprint}" in done.stdout
    server_token = (root / "token").read_text().strip()
    agent_token = (root / "agent-token").read_text().strip()
    assert server_token.startswith(f"K10{fingerprint}::server:")
    assert agent_token.startswith(f"K10{fingerprint}::node:")
    for secret in (server_token, agent_token):
        assert secret.rsplit(":", 1)[1] not in done.stdout + done.stderr
    assert not list(cluster_fleet.glob(".cluster*"))


def test_server_ca_bundle_chains_to_the_root(layout: dict[str, bytes], tmp_path: Path) -> None:
    """server-ca.crt is what /cacerts serves: server CA + intermediate + root, verifiable."""
    bundle = tmp_path / "server-ca.crt"
    bundle.write_bytes(layout["server-ca.crt"])
    (tmp_path / "root.pem").write_bytes(layout["root-ca.pem"])
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "root.pem"), "-untrusted", str(bundle),
         str(bundle)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert len(x509.load_pem_x509_certificates(layout["server-ca.crt"])) == 3


def test_layout_follows_k3s_custom_ca_script(layout: dict[str, bytes]) -> None:
    def cert(name: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate(layout[name])

    def days(c: x509.Certificate) -> int:
        return round((c.not_valid_after_utc - c.not_valid_before_utc) / datetime.timedelta(days=1))

    root, inter = cert("root-ca.pem"), cert("intermediate-ca.pem")
    assert isinstance(root.public_key(), rsa.RSAPublicKey) and root.public_key().key_size == 4096  # type: ignore[union-attr]
    assert days(root) == 7300 and days(inter) == 3700
    assert root.subject.rfc4514_string().startswith("CN=k3s-root-ca@")
    for name in ("server", "client", "request-header", "etcd/peer", "etcd/server"):
        leaf = cert(f"{name}-ca.pem")
        assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
        assert leaf.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
        assert days(leaf) == 3700 and leaf.issuer == inter.subject
        constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.critical and constraints.value.ca
        assert constraints.value.path_length is None
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
        assert usage.critical and usage.value.key_cert_sign and usage.value.digital_signature
        assert layout[f"{name}-ca.key"].startswith(b"-----BEGIN EC PRIVATE KEY-----")
    assert layout["root-ca.key"].startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert layout["service.key"].startswith(b"-----BEGIN RSA PRIVATE KEY-----")


def test_hash_rules_match_k3s_hashca(layout: dict[str, bytes], tmp_path: Path) -> None:
    single = layout["server-ca.pem"]
    assert k3s_ca_hash(single) == hashlib.sha256(single).hexdigest()
    bundle = layout["server-ca.crt"]
    assert k3s_ca_hash(bundle) == openssl_fingerprint(layout["root-ca.pem"], tmp_path)
    # Certificates that do not chain: K3s falls back to the digest of the whole body.
    other = {f.path: f.data for f in generate()}
    unrelated = layout["server-ca.pem"] + other["root-ca.pem"]
    assert k3s_ca_hash(unrelated) == hashlib.sha256(unrelated).hexdigest()
    assert k3s_ca_hash(b"not a pem") == hashlib.sha256(b"not a pem").hexdigest()


def test_show_prints_hash_and_expiry_never_a_secret(cluster_fleet: Path) -> None:
    assert pifleet("cluster", "init", "fleet.yaml", cwd=cluster_fleet).returncode == 0
    shown = pifleet("cluster", "show", "fleet.yaml", cwd=cluster_fleet)
    assert shown.returncode == 0, shown.stderr
    token = (cluster_fleet / "cluster" / "token").read_text().strip()
    assert f"K10 CA hash: {token[3:67]}" in shown.stdout
    assert "expires" in shown.stdout
    assert token.rsplit(":", 1)[1] not in shown.stdout
    assert b"PRIVATE KEY" not in shown.stdout.encode()


def test_init_never_overwrites_a_cluster(cluster_fleet: Path) -> None:
    assert pifleet("cluster", "init", "fleet.yaml", cwd=cluster_fleet).returncode == 0
    token = (cluster_fleet / "cluster" / "token").read_bytes()
    again = pifleet("cluster", "init", "fleet.yaml", cwd=cluster_fleet)
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "already exists" in again.stderr
    assert (cluster_fleet / "cluster" / "token").read_bytes() == token


@pytest.mark.parametrize(
    ("cluster", "devices", "message"),
    [
        ("cluster:\n  create: true\n  server: https://a:6443", DEVICES,
         "cluster.servers: required with cluster.create: true"),
        ("cluster:\n  create: true\n  server: https://a:6443\n  servers: [edge-srv-9]", DEVICES,
         "cluster.servers[0]: 'edge-srv-9' is not among the devices"),
        (CREATE + "\n  token_file: token", DEVICES, "cluster.token_file: not with cluster.create"),
        (CREATE + "\n  role: server", DEVICES, "cluster.role: not with cluster.create"),
        ("cluster:\n  server: https://a:6443\n  token_file: t\n  servers: [edge-srv-1]", DEVICES,
         "cluster.servers: only meaningful with cluster.create: true"),
        (CREATE, DEVICES + "  - {hostname: edge-agent-3, role: server}",
         "devices[5].role: 'server' conflicts with cluster.servers (edge-agent-3 is not listed"),
        (CREATE, DEVICES.replace("hostname: edge-srv-2", "{hostname: edge-srv-2, role: agent}"),
         "devices[1].role: 'agent' conflicts with cluster.servers (edge-srv-2 is listed"),
        ("cluster:\n  server: https://a:6443\n  token_file: t", DEVICES + "  - {hostname: x, role: agent}",
         "devices[5].role: only meaningful with cluster.create: true"),
        ("cluster:\n  create: true\n  server: https://a:6443\n  servers: [edge-srv-2]\n"
         "  initialized: true", DEVICES, "cluster.initialized: edge-srv-2 is the only server"),
        ("cluster:\n  server: https://a:6443\n  token_file: t\n  initialized: true", DEVICES,
         "cluster.initialized: only meaningful with cluster.create: true"),
    ],
)  # fmt: skip
def test_bad_cluster_input_is_one_line(
    tmp_path: Path, cluster: str, devices: str, message: str
) -> None:
    (tmp_path / "fleet.yaml").write_text(fleet_yaml(cluster=cluster, devices=devices))
    done = pifleet("cluster", "init", "fleet.yaml", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "cluster").exists()
    assert os.listdir(tmp_path) == ["fleet.yaml"]


def test_initialized_cluster_rejoins_every_server(tmp_path: Path) -> None:
    """Re-flashing the first server: with cluster.initialized its seed says join, and it
    joins through the next server since cluster.server names the device itself."""
    from builder.config.fleet import load
    from builder.fleet.servers import seed
    from firstboot.joinconfig import DeviceConfig

    for initialized, first_init, first_server in (
        (False, True, None),
        (True, False, "https://edge-srv-2:6443"),
    ):
        text = CREATE + ("\n  initialized: true" if initialized else "")
        (tmp_path / "fleet.yaml").write_text(fleet_yaml(cluster=text, devices=DEVICES))
        config = load(tmp_path / "fleet.yaml")
        devices = {d.hostname: d for d in config.devices}
        first = seed(config, devices["edge-srv-1"], DeviceConfig(hostname="edge-srv-1"))
        assert (first.cluster_init, first.server) == (first_init, first_server)
        second = seed(config, devices["edge-srv-2"], DeviceConfig(hostname="edge-srv-2"))
        assert (second.cluster_init, second.server) == (False, "https://edge-srv-1:6443")


# -- a damaged CA set is refused before anything uses it (issue 21, item 8) -----------------


@pytest.fixture(scope="module")
def initialized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fleet folder after `cluster init`, made once: tests copy it."""
    folder = tmp_path_factory.mktemp("initialized")
    (folder / "fleet.yaml").write_text(fleet_yaml(cluster=CREATE, devices=DEVICES))
    done = pifleet("cluster", "init", "fleet.yaml", cwd=folder)
    assert done.returncode == 0, done.stderr
    return folder


def _forged_ca(subject_of: bytes) -> bytes:
    """A self-signed CA certificate with the subject of `subject_of` (another key)."""
    from cryptography.hazmat.primitives import hashes, serialization

    real = x509.load_pem_x509_certificate(subject_of)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(real.subject)
        .issuer_name(real.issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _damage(cluster: Path, how: str) -> None:
    tls = cluster / "tls"
    if how == "garbage":
        (tls / "client-ca.crt").write_bytes(b"garbage\n")
    elif how == "missing":
        (tls / "client-ca.crt").unlink()
    elif how == "missing-etcd":
        (tls / "etcd" / "peer-ca.crt").unlink()
    elif how == "wrong-key":
        (tls / "client-ca.key").write_bytes((tls / "server-ca.key").read_bytes())
    elif how == "forged":
        (tls / "client-ca.pem").write_bytes(_forged_ca((tls / "client-ca.pem").read_bytes()))
    elif how == "reordered":
        certs = (tls / "client-ca.crt").read_bytes().split(b"-----END CERTIFICATE-----\n")
        (tls / "client-ca.crt").write_bytes(
            b"-----END CERTIFICATE-----\n".join([certs[0], certs[2], certs[1], b""])
        )
    elif how == "token":
        token = (cluster / "token").read_text()
        (cluster / "token").write_text("K10" + "0" * 64 + token[67:])


DAMAGES = {
    "garbage": "tls/client-ca.crt: holds no PEM certificate",
    "missing": "tls/client-ca.crt: is missing",
    "missing-etcd": "tls/etcd/peer-ca.crt: is missing",
    "wrong-key": "tls/client-ca.key: is not the key of client-ca.pem",
    "forged": "tls/client-ca.pem: is not signed by the intermediate CA",
    "reordered": "tls/client-ca.crt: is not the CA followed by its chain",
    "token": "cluster/token: is not one line K10<CA hash>",
}


@pytest.mark.parametrize("how", sorted(DAMAGES))
def test_show_refuses_a_damaged_ca_set(initialized: Path, tmp_path: Path, how: str) -> None:
    """Before: `cluster show` printed the hash and expiry dates of whatever it found."""
    import shutil

    shutil.copytree(initialized, tmp_path / "fleet")
    _damage(tmp_path / "fleet" / "cluster", how)
    shown = pifleet("cluster", "show", "fleet.yaml", cwd=tmp_path / "fleet")
    assert shown.returncode == 2, shown.stdout + shown.stderr
    assert shown.stderr.count("\n") == 1 and DAMAGES[how] in shown.stderr, shown.stderr
    assert "damaged" in shown.stderr and shown.stdout == ""
    token = (tmp_path / "fleet" / "cluster" / "token").read_text().strip()
    assert token.rsplit(":", 1)[1] not in shown.stderr


def test_per_device_build_refuses_a_damaged_ca_set(initialized: Path, tmp_path: Path) -> None:
    """Before: server images were built with the garbage client-ca.crt in their root."""
    import shutil

    from tests.layouts import LAYOUTS, make_pi_image

    fleet = tmp_path / "fleet"
    shutil.copytree(initialized, fleet)
    make_pi_image(fleet / "base.img", LAYOUTS["trixie"], "arm64")
    _damage(fleet / "cluster", "garbage")
    done = pifleet("build", "fleet.yaml", "--per-device", cwd=fleet)
    assert done.returncode == 2, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("pifleet: ")]
    assert len(errors) == 1 and DAMAGES["garbage"] in errors[0], done.stderr
    assert not list(fleet.rglob("edge-srv-*.img")), sorted(fleet.rglob("*.img"))
