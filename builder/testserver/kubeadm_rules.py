"""Who may do what on the kubeadm test server, decided as a kubeadm control plane decides it.

Every rule, and the source it follows (kubernetes/kubernetes unless said; k/cb is
kubernetes/cluster-bootstrap):

| rule | source |
|---|---|
| cluster-info holds `kubeconfig` and, for each valid signing token, `jws-kubeconfig-<id>` (HS256 detached JWS, header `{"alg":"HS256","kid":<id>}`) | pkg/controller/bootstrap/bootstrapsigner.go: signConfigMap; k/cb token/jws/jws.go: ComputeDetachedSignature |
| a token signs only when `usage-bootstrap-signing` is "true" and it has not expired | pkg/controller/bootstrap/util.go: validateSecretForSigning; k/cb util/secrets/secrets.go: HasExpired |
| a Bearer `<id>.<secret>` authenticates when the token exists, the secret matches (constant time), it has not expired and `usage-bootstrap-authentication` is "true" | plugin/pkg/auth/authenticator/token/bootstrap/bootstrap.go: AuthenticateToken |
| its user is `system:bootstrap:<id>`, its groups `system:bootstrappers` plus the token's extra groups (kubeadm: `system:bootstrappers:kubeadm:default-node-token`) | bootstrap.go; k/cb token/api/types.go: BootstrapUserPrefix, BootstrapDefaultGroup; k/cb util/secrets: GetGroups |
| a Bearer that does not authenticate is 401, even where anonymous may read | k8s.io/apiserver pkg/endpoints/filters/authentication.go: WithAuthentication (Unauthorized) |
| no credentials: `system:anonymous` in `system:unauthenticated` | k8s.io/apiserver pkg/authentication/request/anonymous |
| a client certificate the cluster CA signed: user CN, groups O | k8s.io/apiserver pkg/authentication/request/x509: CommonNameUserConversion |
| anonymous may only get configmaps/cluster-info in kube-public, and /version, /healthz, /livez, /readyz | cmd/kubeadm/app/phases/bootstraptoken/clusterinfo/clusterinfo.go: CreateClusterInfoRBACRules; plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go: system:public-info-viewer |
| discovery (/api, /apis) needs an authenticated user | bootstrappolicy/policy.go: system:discovery (system:authenticated only) |
| kubeadm's token group may create/get/list/watch CSRs, and get nodes | cmd/kubeadm/app/phases/bootstraptoken/node/tlsbootstrap.go: AllowBootstrapTokensToPostCSRs (system:node-bootstrapper), AllowBootstrapTokensToGetNodes |
| nodes may create/get/list/watch CSRs | bootstrappolicy/policy.go: NodeRules |
| a node may create a Node (NodeRestriction then allows only its own name) and get/list/watch only its own Node | plugin/pkg/auth/authorizer/node/node_authorizer.go: authorizeNode; plugin/pkg/admission/noderestriction/admission.go: admitNode |
| a node may patch or update only its own Node's `status` subresource (how the kubelet reports Ready) | bootstrappolicy/policy.go NodeRules (nodes/status); noderestriction admission.go: admitNode |
| a denial is 403 `<resource> "<name>" is forbidden: User "<u>" cannot <verb> resource ...` | k8s.io/apiserver pkg/endpoints/handlers/responsewriters/errors.go: ForbiddenStatusError |
| errors are a metav1.Status JSON | k8s.io/apimachinery pkg/api/errors |
| admin.conf's user is in `kubeadm:cluster-admins`, bound to cluster-admin: it may do anything (as may `system:masters`) | cmd/kubeadm/app/phases/kubeconfig (v1.29+: admin.conf and super-admin.conf); bootstrappolicy cluster-admin |
| a kubelet client CSR: signer kube-apiserver-client-kubelet; O exactly [system:nodes]; no DNS, email, IP or URI SANs; CN `system:node:*`; usages {digital signature, key encipherment, client auth} or without key encipherment | pkg/controller/certificates/approver/sarapprove.go: isNodeClientCert; pkg/apis/certificates/helpers.go: ValidateKubeletClientCSR |
| auto-approval: `selfnodeclient` when the requester is the CN (granted to system:nodes), else `nodeclient` (granted to kubeadm's token group); anything else stays pending | sarapprove.go: recognizers, handle; tlsbootstrap.go: AutoApproveNodeBootstrapTokens, AutoApproveNodeCertificateRotation |
| an approved kubelet client CSR is signed by the cluster CA, at most a year (or expirationSeconds, at least 600) | pkg/controller/certificates/signer/signer.go; kube-controller-manager --cluster-signing-duration (8760h) |
| the CSR's spec.username/groups are the requester's, not the body's | pkg/registry/certificates/certificates/strategy.go: PrepareForCreate |
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from builder.testserver.rules import status_body

ANONYMOUS = "system:anonymous"
UNAUTHENTICATED = "system:unauthenticated"
AUTHENTICATED = "system:authenticated"
BOOTSTRAPPERS = "system:bootstrappers"
KUBEADM_TOKEN_GROUP = "system:bootstrappers:kubeadm:default-node-token"
NODES = "system:nodes"
CLUSTER_ADMINS = "kubeadm:cluster-admins"
MASTERS = "system:masters"
KUBELET_CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
BEARER = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
PUBLIC_INFO = ("/version", "/healthz", "/livez", "/readyz")
CLIENT_USAGES = (
    frozenset({"digital signature", "key encipherment", "client auth"}),
    frozenset({"digital signature", "client auth"}),
)
KNOWN_USAGES = frozenset(
    {
        "signing", "digital signature", "content commitment", "key encipherment",
        "key agreement", "data encipherment", "cert sign", "crl sign", "encipher only",
        "decipher only", "any", "server auth", "client auth", "code signing",
        "email protection", "s/mime", "ipsec end system", "ipsec tunnel", "ipsec user",
        "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc",
    }
)  # fmt: skip


def detached_jws(content: bytes, token_id: str, secret: str) -> str:
    """The bootstrapsigner's signature of `content` (written here from jws.go, apart from
    firstboot/jws.py, so that the device's check is tested against a second reading)."""

    def enc(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = enc(json.dumps({"alg": "HS256", "kid": token_id}).replace(" ", "").encode())
    mac = hmac.new(secret.encode(), header + b"." + enc(content), hashlib.sha256).digest()
    return (header + b".." + enc(mac)).decode()


@dataclass(frozen=True)
class Caller:
    user: str
    groups: frozenset[str]
    error: int = 0  # 401 when the credentials did not authenticate

    @property
    def node(self) -> str | None:
        if NODES in self.groups and self.user.startswith("system:node:"):
            return self.user.removeprefix("system:node:")
        return None


@dataclass(frozen=True)
class Attributes:
    """What the apiserver's RequestInfo says of a request."""

    verb: str
    group: str
    resource: str
    namespace: str
    name: str
    path: str
    subresource: str = ""

    @property
    def is_resource(self) -> bool:
        return bool(self.resource)


VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def attributes(method: str, path: str, query: str) -> Attributes:
    """RequestInfo for core (/api/v1) and group (/apis/<g>/<v>) resource paths."""
    parts = [p for p in path.split("/") if p]
    group, rest = "", []
    if parts[:2] == ["api", "v1"]:
        rest = parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    namespace = ""
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    verb = VERBS.get(method, method.lower())
    if verb == "get" and resource and not name:
        verb = "watch" if "watch=1" in query or "watch=true" in query else "list"
    return Attributes(verb, group, resource, namespace, name, path, subresource)


def authorize(caller: Caller, attrs: Attributes) -> str:
    """'' when allowed, else why not (the node authorizer's reason, or RBAC's none)."""
    groups = caller.groups
    if CLUSTER_ADMINS in groups or MASTERS in groups:
        return ""
    if not attrs.is_resource:
        if attrs.path in PUBLIC_INFO:
            return ""
        return "" if AUTHENTICATED in groups and attrs.path in ("/api", "/apis") else "-"
    if (attrs.resource, attrs.namespace, attrs.name, attrs.verb) == (
        "configmaps",
        "kube-public",
        "cluster-info",
        "get",
    ):
        return ""
    csr_verbs = ("create", "get", "list", "watch")
    csr = (attrs.group, attrs.resource) == ("certificates.k8s.io", "certificatesigningrequests")
    if csr and attrs.verb in csr_verbs and (KUBEADM_TOKEN_GROUP in groups or NODES in groups):
        return ""
    if attrs.group == "" and attrs.resource == "nodes":
        if KUBEADM_TOKEN_GROUP in groups and attrs.verb == "get":
            return ""
        node = caller.node
        if node is not None and attrs.subresource == "status":
            if attrs.verb in ("patch", "update") and attrs.name == node:
                return ""
            return f"node '{node}' can only update its own Node's status"
        if attrs.subresource:
            return "-"
        if node is not None and attrs.verb == "create":
            return ""  # NodeRestriction admission checks the name (admit_node)
        if node is not None and attrs.verb in ("get", "list", "watch"):
            if attrs.name == node:
                return ""
            if not attrs.name:
                return f"node '{node}' cannot read all nodes, only its own Node object"
            return f"node '{node}' cannot read '{attrs.name}', only its own Node object"
    return "-"


def forbidden(caller: Caller, attrs: Attributes, reason: str) -> tuple[int, bytes]:
    """403 as ForbiddenStatusError words it."""
    if not attrs.is_resource:
        text = f'forbidden: User "{caller.user}" cannot {attrs.verb} path "{attrs.path}"'
        return 403, status_body(403, text)
    where = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    named = f'{attrs.resource} "{attrs.name}"' if attrs.name else attrs.resource
    text = (
        f'{named} is forbidden: User "{caller.user}" cannot {attrs.verb} resource '
        f'"{attrs.resource}" in API group "{attrs.group}" {where}'
    )
    if reason and reason != "-":
        text += ": " + reason
    details = {"name": attrs.name, "kind": attrs.resource} if attrs.name else None
    return 403, status_body(403, text, details)


def admit_node(caller: Caller, body: dict[str, Any]) -> str:
    """NodeRestriction on create: '' when a node creates its own Node, else why not."""
    node = caller.node
    wanted = str((body.get("metadata") or {}).get("name") or "")
    if node is not None and wanted != node:
        return (
            f'nodes "{wanted}" is forbidden: node "{node}" is not allowed to modify node "{wanted}"'
        )
    return ""


def kubelet_client_problem(csr: x509.CertificateSigningRequest, usages: set[str]) -> str:
    """'' when the request is a kubelet client certificate (ValidateKubeletClientCSR)."""
    orgs = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if orgs != [NODES]:
        return "subject organization is not system:nodes"
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = None
    if sans is not None and len(list(sans)) > 0:
        return "DNS, email, IP or URI subjectAltNames are not allowed"
    common = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if not common or not str(common[0]).startswith("system:node:"):
        return 'subject common name does not begin with "system:node:"'
    if frozenset(usages) not in CLIENT_USAGES:
        return "usages did not match [client auth digital signature key encipherment]"
    return ""


def approval(spec: dict[str, Any], csr: x509.CertificateSigningRequest) -> str | None:
    """The csrapproving controller: its success message, or None (left pending)."""
    if spec.get("signerName") != KUBELET_CLIENT_SIGNER:
        return None
    if kubelet_client_problem(csr, set(spec.get("usages") or [])):
        return None
    common = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    groups = set(spec.get("groups") or [])
    if spec.get("username") == common and NODES in groups:
        return "Auto approving self kubelet client certificate after SubjectAccessReview."
    if KUBEADM_TOKEN_GROUP in groups:
        return "Auto approving kubelet client certificate after SubjectAccessReview."
    return None


def csr_problem(spec: Any) -> tuple[str, x509.CertificateSigningRequest | None]:
    """('', parsed CSR) for a valid certificates.k8s.io/v1 spec, else (why, None)."""
    if not isinstance(spec, dict):
        return "spec: Required value", None
    if not spec.get("signerName"):
        return "spec.signerName: Required value", None
    usages = spec.get("usages")
    if not isinstance(usages, list) or not usages:
        return "spec.usages: Required value", None
    if any(u not in KNOWN_USAGES for u in usages):
        return "spec.usages: Unsupported value", None
    seconds = spec.get("expirationSeconds")
    if seconds is not None and (not isinstance(seconds, int) or seconds < 600):
        return (
            "spec.expirationSeconds: Invalid value: may not specify a duration less than 600 seconds",
            None,
        )
    try:
        pem = base64.b64decode(str(spec.get("request", "")), validate=True)
        csr = x509.load_pem_x509_csr(pem)
    except ValueError:
        return "spec.request: Invalid value: PEM block type must be CERTIFICATE REQUEST", None
    if not csr.is_signature_valid:
        return "spec.request: Invalid value: the CSR's signature is invalid", None
    return "", csr


def unauthorized() -> tuple[int, bytes]:
    return 401, status_body(401, "Unauthorized")
