"""The kubeadm test server (builder/testserver/kubeadm*.py) over real HTTPS: anonymous access
to cluster-info only, bootstrap-token authentication, the TLS bootstrap's CSR approval as
csrapproving does it, and the node authorizer with the issued client certificate."""

from __future__ import annotations

import base64
import http.client
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from builder.testserver.kubeadm import KubeadmTestServer
from firstboot.kubeadm_discovery import CLUSTER_INFO
from tests.kubeadm_client import CSRS, call, csr_body, node_credentials


@pytest.fixture
def server(tmp_path: Path) -> KubeadmTestServer:
    with KubeadmTestServer(state_dir=tmp_path / "server") as running:
        yield running  # type: ignore[misc]


def assert_status(answer: dict[str, Any], code: int, reason: str) -> None:
    assert {k: answer[k] for k in ("kind", "apiVersion", "status", "reason", "code")} == {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": reason,
        "code": code,
    }
    assert isinstance(answer["message"], str) and answer["message"]


def test_anonymous_may_read_cluster_info_and_nothing_else(server: KubeadmTestServer) -> None:
    token = server.mint_token()
    status, configmap = call(server, "GET", CLUSTER_INFO)
    assert status == 200 and configmap["kind"] == "ConfigMap"
    token_id = token.split(".")[0]
    assert set(configmap["data"]) == {"kubeconfig", f"jws-kubeconfig-{token_id}"}
    for path in (
        "/api/v1/namespaces/kube-public/configmaps/other",
        "/api/v1/namespaces/kube-system/configmaps/cluster-info",
        "/api/v1/nodes",
        CSRS,
        "/api",
    ):
        status, answer = call(server, "GET", path)
        assert status == 403, path
        assert_status(answer, 403, "Forbidden")
        assert 'User "system:anonymous"' in answer["message"]
    status, answer = call(server, "POST", CSRS, csr_body()[0])
    assert status == 403 and "cannot create" in answer["message"]
    assert call(server, "GET", "/version")[0] == 200


def test_a_token_that_does_not_authenticate_is_401(server: KubeadmTestServer) -> None:
    good = server.mint_token()
    for token in (server.wrong_token(good), server.mint_token(ttl=-1), "not-a-token"):
        status, answer = call(server, "GET", CLUSTER_INFO, token=token)  # even where anon may
        assert status == 401
        assert_status(answer, 401, "Unauthorized")
    status, _ = call(server, "GET", CLUSTER_INFO, token=good)
    assert status == 200
    signing_only = server.mint_token(usages=("signing",))
    assert call(server, "GET", CLUSTER_INFO, token=signing_only)[0] == 401
    assert f"jws-kubeconfig-{signing_only[:6]}" in call(server, "GET", CLUSTER_INFO)[1]["data"]


def test_an_expired_token_has_no_signature(server: KubeadmTestServer) -> None:
    expired = server.mint_token(ttl=-1)
    auth_only = server.mint_token(usages=("authentication",))
    data = call(server, "GET", CLUSTER_INFO)[1]["data"]
    assert f"jws-kubeconfig-{expired[:6]}" not in data
    assert f"jws-kubeconfig-{auth_only[:6]}" not in data


def test_the_tls_bootstrap_is_approved_and_signed(server: KubeadmTestServer) -> None:
    body, key = csr_body("pi-01")
    token = server.mint_token()
    status, created = call(server, "POST", CSRS, body, token=token)
    assert status == 201
    assert created["spec"]["username"] == f"system:bootstrap:{token[:6]}"
    assert "system:bootstrappers:kubeadm:default-node-token" in created["spec"]["groups"]
    [condition] = created["status"]["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "Approved",
        "True",
        "AutoApproved",
    )
    name = created["metadata"]["name"]
    assert name.startswith("csr-")
    status, fetched = call(server, "GET", f"{CSRS}/{name}", token=token)
    cert = x509.load_pem_x509_certificate(base64.b64decode(fetched["status"]["certificate"]))
    assert cert.subject.rfc4514_string() == "CN=system:node:pi-01,O=system:nodes"
    assert cert.issuer == server.ca.cert.subject
    server.ca.cert.public_key().verify(  # type: ignore[union-attr, call-arg]
        cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256())
    )
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()


@pytest.mark.parametrize(
    "change",
    [
        {"org": "system:masters"},
        {"dns": "pi-01.lan"},
        {"usages": ["digital signature", "key encipherment", "server auth"]},
        {"usages": ["digital signature", "client auth", "server auth"]},
        {"signer": "kubernetes.io/kube-apiserver-client"},
    ],
)
def test_csrs_that_are_not_kubelet_client_certificates_stay_pending(
    server: KubeadmTestServer, change: dict[str, Any]
) -> None:
    status, created = call(server, "POST", CSRS, csr_body(**change)[0], token=server.mint_token())
    assert status == 201
    assert created["status"] == {}  # neither approved nor signed


def test_a_kubelet_client_csr_without_key_encipherment_is_approved(
    server: KubeadmTestServer,
) -> None:
    body = csr_body(usages=["digital signature", "client auth"])[0]
    status, created = call(server, "POST", CSRS, body, token=server.mint_token())
    assert status == 201 and "certificate" in created["status"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"signerName": ""}, "signerName"),
        ({"usages": []}, "usages"),
        ({"request": base64.b64encode(b"junk").decode()}, "request"),
        ({"expirationSeconds": 60}, "expirationSeconds"),
    ],
)
def test_invalid_csrs_are_422(server: KubeadmTestServer, spec: dict[str, Any], field: str) -> None:
    body = csr_body()[0]
    body["spec"].update(spec)
    status, answer = call(server, "POST", CSRS, body, token=server.mint_token())
    assert status == 422 and field in answer["message"]
    assert_status(answer, 422, "Invalid")


def test_a_node_registers_itself_only(server: KubeadmTestServer, tmp_path: Path) -> None:
    cert = node_credentials(server, tmp_path, "pi-01")
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "pi-01"}}
    assert call(server, "GET", "/api/v1/nodes/pi-01", cert=cert)[0] == 404  # read before create
    assert call(server, "POST", "/api/v1/nodes", node, cert=cert)[0] == 201
    assert call(server, "POST", "/api/v1/nodes", node, cert=cert)[0] == 409
    other = {**node, "metadata": {"name": "pi-02"}}
    status, answer = call(server, "POST", "/api/v1/nodes", other, cert=cert)
    assert status == 403 and 'not allowed to modify node "pi-02"' in answer["message"]
    status, fetched = call(server, "GET", "/api/v1/nodes/pi-01", cert=cert)
    assert status == 200 and fetched["metadata"]["name"] == "pi-01"
    status, answer = call(server, "GET", "/api/v1/nodes/pi-02", cert=cert)
    assert status == 403 and "cannot read 'pi-02', only its own Node object" in answer["message"]
    assert_status(answer, 403, "Forbidden")
    assert call(server, "GET", "/api/v1/nodes", cert=cert)[0] == 403
    assert server.nodes() == ["pi-01"]
    assert {"system:node:pi-01", "system:anonymous"} & {r.who for r in server.requests}


def test_a_node_reports_its_own_status_only(server: KubeadmTestServer, tmp_path: Path) -> None:
    cert = node_credentials(server, tmp_path, "pi-01")
    other = node_credentials(server, tmp_path, "pi-02")
    for name, creds in (("pi-01", cert), ("pi-02", other)):
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
        assert call(server, "POST", "/api/v1/nodes", node, cert=creds)[0] == 201
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    status, patched = call(server, "PATCH", "/api/v1/nodes/pi-01/status", ready, cert=cert)
    assert status == 200 and patched["status"]["conditions"] == ready["status"]["conditions"]
    pressure = {"status": {"conditions": [{"type": "MemoryPressure", "status": "False"}]}}
    status, patched = call(server, "PATCH", "/api/v1/nodes/pi-01/status", pressure, cert=cert)
    assert {c["type"] for c in patched["status"]["conditions"]} == {"Ready", "MemoryPressure"}
    status, answer = call(server, "PATCH", "/api/v1/nodes/pi-02/status", ready, cert=cert)
    assert status == 403 and "only update its own Node's status" in answer["message"]
    token = server.mint_token()
    assert call(server, "PATCH", "/api/v1/nodes/pi-01/status", ready, token=token)[0] == 403
    assert "status" not in call(server, "GET", "/api/v1/nodes/pi-02", cert=other)[1]


def test_a_bootstrap_token_cannot_register_a_node(server: KubeadmTestServer) -> None:
    token = server.mint_token()
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "pi-01"}}
    status, answer = call(server, "POST", "/api/v1/nodes", node, token=token)
    assert status == 403 and f"system:bootstrap:{token[:6]}" in answer["message"]
    assert call(server, "GET", "/api/v1/nodes/pi-01", token=token)[0] == 404  # kubeadm:get-nodes


def test_a_certificate_from_another_ca_is_not_a_node(
    server: KubeadmTestServer, tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
            x509.NameAttribute(NameOID.COMMON_NAME, "system:node:pi-01"),
        ]
    )
    from cryptography.x509.oid import ExtendedKeyUsageOID

    forged = server.attacker_ca.issue(subject, key.public_key(), ExtendedKeyUsageOID.CLIENT_AUTH)
    cert_file, key_file = tmp_path / "f.crt", tmp_path / "f.key"
    cert_file.write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        call(server, "GET", "/api/v1/nodes/pi-01", cert=(cert_file, key_file))
    assert server.nodes() == []


def test_the_log_names_who_and_never_a_secret(server: KubeadmTestServer) -> None:
    token = server.mint_token()
    call(server, "GET", CLUSTER_INFO)
    call(server, "POST", CSRS, csr_body()[0], token=token)
    call(server, "GET", CLUSTER_INFO, token=server.wrong_token(token))
    assert [(r.who, r.authorization, r.status) for r in server.requests] == [
        ("system:anonymous", False, 200),
        (f"system:bootstrap:{token[:6]}", True, 201),
        ("-", True, 401),
    ]
    assert token.split(".")[1] not in repr(server.requests)


KUBECTL = shutil.which("kubectl")


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kubectl_reads_its_own_node_only(server: KubeadmTestServer, tmp_path: Path) -> None:
    cert_file, key_file = node_credentials(server, tmp_path, "pi-01")
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "pi-01"}}
    assert call(server, "POST", "/api/v1/nodes", node, cert=(cert_file, key_file))[0] == 201
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(server.ca_pem)
    config = tmp_path / "kubelet.conf"
    args = [f"--kubeconfig={config}"]
    subprocess.run(
        [KUBECTL, *args, "config", "set-cluster", "k", f"--server={server.url}",
         f"--certificate-authority={ca_file}"], check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [KUBECTL, *args, "config", "set-credentials", "n", f"--client-certificate={cert_file}",
         f"--client-key={key_file}"], check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [KUBECTL, *args, "config", "set-context", "c", "--cluster=k", "--user=n"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run([KUBECTL, *args, "config", "use-context", "c"], check=True, capture_output=True)
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    own = subprocess.run(
        [KUBECTL, *args, "get", "node", "pi-01", "-o", "name"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert (own.returncode, own.stdout.strip()) == (0, "node/pi-01"), own.stderr
    other = subprocess.run(
        [KUBECTL, *args, "get", "node", "pi-02", "-o", "name"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert other.returncode != 0 and "only its own Node object" in other.stderr
