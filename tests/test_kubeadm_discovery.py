"""kubeadm token discovery on the device (firstboot/kubeadm_discovery.py) against the kubeadm
test server on 127.0.0.1: the conformance cases of kubeadm's token.go, and what must never
leave the device (the token) or reach the server (anything after a failed proof)."""

from __future__ import annotations

import datetime
import hashlib
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from builder.testserver import kubeadm_rules
from builder.testserver.kubeadm import KubeadmTestServer
from builder.testserver.server import free_port
from firstboot import jws, kubeconfig
from firstboot import kubeadm_discovery as discovery
from firstboot.kubeadm_discovery import CLUSTER_INFO, DiscoveryError

# cluster-bootstrap token/jws/jws_test.go: TestComputeDetachedSignature
UPSTREAM = (
    "Hello from the other side. I must have called a thousand times.",
    "joshua",
    "my voice is my passcode",
    "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..VShe2taLd-YTrmWuRkcL_8QTNDHYxQIEBsAYYiIj1_8",
)


@pytest.fixture
def server(tmp_path: Path) -> KubeadmTestServer:
    with KubeadmTestServer(state_dir=tmp_path / "server") as running:
        yield running  # type: ignore[misc]


def refused(server: KubeadmTestServer, token: str, pins: list[str], **kw: object) -> DiscoveryError:
    """The DiscoveryError of a discovery that must fail, checked to be one line without any
    token secret the server knows or the device was given."""
    with pytest.raises(DiscoveryError) as caught:
        discovery.discover(server.endpoint, token, pins, timeout=5, **kw)  # type: ignore[arg-type]
    text = str(caught.value)
    assert "\n" not in text and text
    for secret in [*server.token_secrets(), token.partition(".")[2]]:
        assert secret not in text and secret not in repr(caught.value)
    return caught.value


def cluster_info_gets(server: KubeadmTestServer) -> list[tuple[str, str, bool]]:
    return [(r.method, r.path, r.authorization) for r in server.requests]


def test_jws_matches_upstream_vectors_on_both_sides() -> None:
    content, token_id, secret, expected = UPSTREAM
    assert jws.detached_signature(content.encode(), token_id, secret) == expected
    assert kubeadm_rules.detached_jws(content.encode(), token_id, secret) == expected
    jws.verify(expected, content.encode(), token_id, secret)
    with pytest.raises(jws.JWSError, match="does not verify"):
        jws.verify(expected, content.encode() + b" ", token_id, secret)


@pytest.mark.parametrize(
    ("header", "payload", "why"),
    [
        ('{"alg":"none","kid":"joshua"}', "", "algorithm is none"),
        ('{"alg":"HS512","kid":"joshua"}', "", "algorithm is HS512"),
        ('{"alg":"HS256","kid":"other1"}', "", "another token id"),
        ('{"alg":"HS256","kid":"joshua"}', "Y29udGVudA", "only the detached form"),
        ('{"alg":"HS256","jwk":{},"kid":"joshua"}', "", "besides alg and kid"),
    ],
)
def test_jws_refuses_other_forms(header: str, payload: str, why: str) -> None:
    content, token_id, secret, good = UPSTREAM
    forged = jws.b64url(header.encode()) + "." + payload + "." + good.rsplit(".", 1)[1]
    with pytest.raises(jws.JWSError, match=why):
        jws.verify(forged, content.encode(), token_id, secret)


def test_good_token_and_pin_discover_the_cluster(server: KubeadmTestServer) -> None:
    token = server.mint_token()
    found = discovery.discover(server.endpoint, token, [server.ca_hash], timeout=5)
    assert found.ca_pem == server.ca_pem and found.server == server.url and found.pinned
    assert found.ca_hashes == (server.ca_hash,)
    # Two anonymous GETs (the second over TLS verified against the pinned CA), nothing else.
    assert cluster_info_gets(server) == [("GET", CLUSTER_INFO, False)] * 2
    assert {r.who for r in server.requests} == {"system:anonymous"}


def test_a_wrong_token_sends_nothing_more(server: KubeadmTestServer) -> None:
    token = server.mint_token()
    error = refused(server, server.wrong_token(token), [server.ca_hash])
    assert error.kind == "token_rejected" and "does not verify" in str(error)
    assert cluster_info_gets(server) == [("GET", CLUSTER_INFO, False)]


def test_an_unknown_or_expired_token_id_has_no_signature(server: KubeadmTestServer) -> None:
    expired = server.mint_token(ttl=-1)
    error = refused(server, expired, [server.ca_hash])
    assert error.kind == "token_rejected" and expired.split(".")[0] in str(error)
    assert len(server.requests) == 1


def test_a_wrong_pin_sends_nothing_more(server: KubeadmTestServer) -> None:
    token = server.mint_token()
    error = refused(server, token, ["sha256:" + "ab" * 32])
    assert error.kind == "ca_mismatch" and server.ca_hash[:23] in str(error)
    assert cluster_info_gets(server) == [("GET", CLUSTER_INFO, False)]


def test_any_one_of_several_pins_is_enough(server: KubeadmTestServer) -> None:
    token = server.mint_token()
    upper = "SHA256:" + server.ca_hash.split(":")[1].upper()  # pubkeypin: format and hex any case
    found = discovery.discover(server.endpoint, token, ["sha256:" + "00" * 32, upper], timeout=5)
    assert found.pinned and found.ca_pem == server.ca_pem


def test_a_forger_who_guesses_the_secret_is_refused_by_the_jws(server: KubeadmTestServer) -> None:
    token = server.mint_token()
    server.forge(jws_secret="0123456789abcdef")  # its own CA, the JWS made with a guess
    error = refused(server, token, [server.ca_hash])
    assert error.kind == "token_rejected"
    assert cluster_info_gets(server) == [("GET", CLUSTER_INFO, False)]


def test_a_forger_who_knows_the_token_is_refused_by_the_pin(server: KubeadmTestServer) -> None:
    token = server.mint_token()
    server.forge()  # a leaked token: the JWS verifies, the CA in it is the forger's
    error = refused(server, token, [server.ca_hash])
    assert error.kind == "ca_mismatch" and "nothing more was sent" in str(error)
    assert len(server.requests) == 1


def test_a_relay_with_another_certificate_fails_the_second_fetch(
    server: KubeadmTestServer,
) -> None:
    token = server.mint_token()
    server.relay_other_certificate()  # cluster-info is the cluster's; TLS is someone else's
    error = refused(server, token, [server.ca_hash])
    assert error.kind == "ca_mismatch" and "pinned CA" in str(error)
    assert cluster_info_gets(server) == [("GET", CLUSTER_INFO, False)]  # the 2nd: no handshake


def test_the_second_fetch_checks_the_host_name(tmp_path: Path) -> None:
    """client-go verifies the endpoint against the certificate; so does the second fetch."""
    with KubeadmTestServer(state_dir=tmp_path, named=False) as server:
        error = refused(server, server.mint_token(), [server.ca_hash])
        assert error.kind == "ca_mismatch" and "does not name this endpoint" in str(error)
        assert len(server.requests) == 1


def test_a_second_kubeconfig_that_differs_is_refused(server: KubeadmTestServer) -> None:
    token = server.mint_token()
    server.change_kubeconfig_after(1)  # re-signed, so only the comparison can catch it
    error = refused(server, token, [server.ca_hash])
    assert error.kind == "ca_mismatch" and "differs" in str(error)
    assert len(server.requests) == 2


def test_no_pin_is_refused_unless_allowed(server: KubeadmTestServer) -> None:
    token = server.mint_token()
    error = refused(server, token, [])
    assert error.kind == "config" and server.requests == []
    found = discovery.discover(server.endpoint, token, [], allow_unpinned=True, timeout=5)
    assert not found.pinned and found.ca_pem == server.ca_pem
    assert len(server.requests) == 1  # kubeadm skips the second fetch when nothing is pinned
    error = refused(server, server.wrong_token(token), [], allow_unpinned=True)
    assert error.kind == "token_rejected"  # the JWS is still required


def test_a_late_server_is_a_retryable_wait(tmp_path: Path) -> None:
    port = free_port()
    late = KubeadmTestServer(port=port, state_dir=tmp_path / "late")
    token = late.mint_token()
    with pytest.raises(DiscoveryError) as caught:
        discovery.discover(late.endpoint, token, [late.ca_hash], timeout=2)
    assert caught.value.kind == "waiting" and caught.value.kind not in discovery.TERMINAL_KINDS
    assert token.split(".")[1] not in str(caught.value)
    with late:
        assert discovery.discover(late.endpoint, token, [late.ca_hash], timeout=5).pinned


def test_a_json_kubeconfig_is_read_too(tmp_path: Path) -> None:
    with KubeadmTestServer(state_dir=tmp_path, kubeconfig_form="json") as server:
        token = server.mint_token()
        found = discovery.discover(server.endpoint, token, [server.ca_hash], timeout=5)
        assert found.kubeconfig.startswith(b"{") and found.server == server.url


def _openssl_pin(pem_file: Path) -> str:
    """kubeadm's documented recipe, run for real."""
    recipe = (
        f"openssl x509 -pubkey -in {pem_file} | openssl pkey -pubin -outform der "
        "| sha256sum | cut -d' ' -f1"
    )
    out = subprocess.run(["sh", "-c", recipe], capture_output=True, text=True, check=True)
    return "sha256:" + out.stdout.strip()


def _rsa_cert() -> x509.Certificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_the_pin_is_what_openssl_computes(server: KubeadmTestServer, tmp_path: Path) -> None:
    ec_file = tmp_path / "ca.crt"
    ec_file.write_bytes(server.ca_pem)
    rsa_cert = _rsa_cert()  # kubeadm's default CA key is RSA
    rsa_file = tmp_path / "rsa.crt"
    rsa_file.write_bytes(rsa_cert.public_bytes(serialization.Encoding.PEM))
    for pem_file, der in (
        (ec_file, server.ca.der),
        (rsa_file, rsa_cert.public_bytes(serialization.Encoding.DER)),
    ):
        pin = discovery.spki_hash(der)
        assert pin == _openssl_pin(pem_file)
        assert pin != "sha256:" + hashlib.sha256(der).hexdigest()  # not the certificate's hash
    assert discovery.spki_hash(server.ca.der) == server.ca_hash


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("abcdef0123456789abcdef", "one dot"),
        ("ABCDEF.0123456789abcdef", "token id"),
        ("abcdef.0123456789abcdeF", "token secret"),
        ("abcdef.0123456789abcde", "token secret"),
        ("abc.def.0123456789abcdef", "one dot"),
    ],
)
def test_malformed_tokens_are_named_never_shown(text: str, why: str) -> None:
    with pytest.raises(DiscoveryError, match=why) as caught:
        discovery.parse_token(text)
    assert caught.value.kind == "config" and text.split(".")[-1] not in str(caught.value)


def test_a_token_never_shows_its_secret() -> None:
    token = discovery.parse_token(" abcdef.0123456789abcdef\n")
    assert (token.id, token.secret()) == ("abcdef", "0123456789abcdef")
    assert "0123456789abcdef" not in repr(token) + str(token) + f"{token}"


@pytest.mark.parametrize(
    "pin", ["ab" * 32, "md5:" + "ab" * 16, "sha256:" + "ab" * 31, "sha256:" + "zz" * 32, "a:b:c"]
)
def test_malformed_pins_are_refused_before_any_request(server: KubeadmTestServer, pin: str) -> None:
    error = refused(server, server.mint_token(), [pin])
    assert error.kind == "config" and server.requests == []


@pytest.mark.parametrize("endpoint", ["127.0.0.1", "http://127.0.0.1:6443", "host:6443/path"])
def test_malformed_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(DiscoveryError) as caught:
        discovery.discover(endpoint, "abcdef.0123456789abcdef", ["sha256:" + "00" * 32])
    assert caught.value.kind == "config"


KUBECONFIG = b"""apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: TFMwdA==
    server: https://10.0.0.1:6443
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: admin
  name: admin@kubernetes
current-context: admin@kubernetes
kind: Config
preferences: {}
users: null
"""


def test_the_reader_takes_the_current_contexts_cluster() -> None:
    assert kubeconfig.cluster(kubeconfig.load(KUBECONFIG)) == ("https://10.0.0.1:6443", b"LS0t")
    other = KUBECONFIG.replace(b"current-context: admin@kubernetes", b'current-context: ""')
    with pytest.raises(kubeconfig.KubeconfigError, match="no unnamed cluster"):
        kubeconfig.cluster(kubeconfig.load(other))


@pytest.mark.parametrize(
    "change",
    [
        (b"kind: Config", b"kind: &a Config"),  # an anchor
        (b"preferences: {}", b"preferences: {colors: true}"),  # a flow mapping with content
        (b"    server:", b"\tserver:"),  # a tab
        (b"kind: Config", b"kind: |\n  Config"),  # a block scalar
        (b"kind: Config", b"kind: Config\nkind: Config"),  # a duplicate key
        (b"users: null", b"users: null\n---\nkind: Config"),  # a second document
        (b"    server: https://10.0.0.1:6443", b"    server: https://10.0.0.1:6443\n      more"),
    ],
)
def test_the_reader_refuses_what_it_does_not_know(change: tuple[bytes, bytes]) -> None:
    with pytest.raises(kubeconfig.KubeconfigError):
        kubeconfig.load(KUBECONFIG.replace(*change))
