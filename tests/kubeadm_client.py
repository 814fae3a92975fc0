"""A kubeadm API client for the tests, over real HTTPS: a request with a bootstrap token or
a client certificate, and a kubelet's TLS bootstrap (a CSR, its certificate on disk)."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from builder.testserver.kubeadm import KubeadmTestServer

CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
USAGES = ["digital signature", "key encipherment", "client auth"]


def call(
    server: KubeadmTestServer,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    token: str | None = None,
    cert: tuple[Path, Path] | None = None,
) -> tuple[int, dict[str, Any]]:
    context = ssl.create_default_context(cadata=server.ca_pem.decode())
    if cert:
        context.load_cert_chain(*cert)
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    try:
        conn.request(method, path, json.dumps(body) if body else None, headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def csr_body(
    node: str = "pi-01",
    org: str = "system:nodes",
    usages: list[str] | None = None,
    signer: str = SIGNER,
    dns: str = "",
) -> tuple[dict[str, Any], ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node}"),
        ]
    )
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), False)
    pem = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    spec = {
        "request": base64.b64encode(pem).decode(),
        "signerName": signer,
        "usages": usages or USAGES,
    }
    body = {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "csr-"},
        "spec": spec,
    }
    return body, key


def node_credentials(server: KubeadmTestServer, tmp_path: Path, node: str) -> tuple[Path, Path]:
    """A kubelet's TLS bootstrap: a CSR with the bootstrap token, its certificate, on disk."""
    body, key = csr_body(node)
    status, created = call(server, "POST", CSRS, body, token=server.mint_token())
    assert status == 201, created
    status, fetched = call(
        server, "GET", f"{CSRS}/{created['metadata']['name']}", token=server.mint_token()
    )
    assert status == 200
    cert_file, key_file = tmp_path / f"{node}.crt", tmp_path / f"{node}.key"
    cert_file.write_bytes(base64.b64decode(fetched["status"]["certificate"]))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file
