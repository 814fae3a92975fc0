"""kubeadm's token discovery, standard library only: what `kubeadm join` proves about the
control plane before it sends the token, done by the agent before anything else.

| rule | source |
|---|---|
| a bootstrap token is `<id>.<secret>`, `[a-z0-9]{6}` and `[a-z0-9]{16}` | kubernetes/cluster-bootstrap token/api/types.go: BootstrapTokenPattern; token/util/helpers.go: IsValidBootstrapToken |
| a pin is `sha256:<64 hex>`; the format is case-insensitive, the hex compared lowercase; anything else is refused | kubernetes cmd/kubeadm/app/util/pubkeypin/pubkeypin.go: Set.Allow, allowSHA256 |
| the pin is sha256 over the certificate's SubjectPublicKeyInfo DER (not the whole certificate, not K3s's hash) | pubkeypin.go: Hash (RawSubjectPublicKeyInfo) |
| no pin is refused unless allow_unpinned (`--discovery-token-unsafe-skip-ca-verification`) | kubeadm apis/kubeadm/validation: ValidateDiscoveryBootstrapToken |
| the first GET of kube-public/configmaps/cluster-info is anonymous over TLS that verifies nothing | cmd/kubeadm/app/discovery/token/token.go: BuildInsecureBootstrapKubeConfig (InsecureSkipTLSVerify, no credentials) |
| cluster-info must hold `kubeconfig`; no `jws-kubeconfig-<id>` means the token id is not (yet) valid there | token.go: validateClusterInfoToken, getClusterInfo; token/api/types.go: KubeConfigKey, JWSSignatureKeyPrefix |
| the JWS must verify over the kubeconfig text before anything in it is believed | token.go: validateClusterInfoToken -> token/jws/jws.go: DetachedTokenIsValid (firstboot/jws.py) |
| the cluster is the kubeconfig's unnamed one, else the current context's | token.go -> util/kubeconfig: GetClusterFromKubeConfig (firstboot/kubeconfig.py) |
| the CA is the cluster's certificate-authority-data; one of its certificates must match one pin | token.go: validateClusterCA; pubkeypin.go: CheckAny |
| without pins (allow_unpinned) the JWS-checked kubeconfig is used as it is, with no second GET | token.go: retrieveValidatedConfigInfo (pubKeyPins.Empty) |
| then cluster-info is fetched again over TLS verified against that CA, and its kubeconfig must be byte for byte the first | token.go: retrieveValidatedConfigInfo (buildSecureBootstrapKubeConfig, bytes.Equal) |
| the second connection checks the host name too, as client-go does with a CA; a kubelet would fail later otherwise | client-go transport (Go crypto/tls ServerName) |

Every failure is one DiscoveryError (a firstboot.server.ServerError) with a one-line message
that never holds the token secret, and a kind the agent acts on:
  waiting         network, TLS, timeouts, 5xx/429, 403 or 404 (RBAC or cluster-info not there
                  yet, as kubeadm polls): retry
  clock           the pinned server's certificate is outside this device's clock
  token_rejected  the JWS does not verify, or cluster-info has no JWS for the token id
  ca_mismatch     no pin matches the CA, the second fetch fails TLS against it or differs
  forbidden       401 to an anonymous GET: the API server does not allow anonymous requests
  not_kubeadm     no cluster-info kubeconfig, or one that cannot be read
  config          a malformed token, pin or endpoint, or no pin without allow_unpinned
Before the JWS verifies, nothing but one anonymous GET has gone to the server; a wrong token,
a wrong pin or a forged JWS ends discovery there. The token itself is sent by kubeadm later.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
import re
import ssl
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

from firstboot import jws, kubeconfig, x509
from firstboot.server import ServerError, bootstrap_context, get, pinned_context, retry_after

CLUSTER_INFO = "/api/v1/namespaces/kube-public/configmaps/cluster-info"
JWS_PREFIX = "jws-kubeconfig-"
_ID = re.compile(r"^[a-z0-9]{6}$")
_SECRET = re.compile(r"^[a-z0-9]{16}$")
TERMINAL_KINDS = ("ca_mismatch", "token_rejected", "forbidden", "not_kubeadm", "config")
HOSTNAME_ERRORS = (62, 64)  # OpenSSL X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


class DiscoveryError(ServerError):
    """One line, never the token secret (module doc: kinds)."""

    def __init__(self, kind: str, message: str, retry_after: Optional[float] = None) -> None:
        one_line = "".join(c if c >= " " else " " for c in message)
        super().__init__(kind, one_line, retry_after)


class BootstrapToken:
    """A kubeadm bootstrap token. Its repr shows the id only."""

    __slots__ = ("_secret", "id")

    def __init__(self, token_id: str, secret: str) -> None:
        self.id = token_id
        self._secret = secret

    def secret(self) -> str:
        return self._secret

    def text(self) -> str:
        """`<id>.<secret>`, for kubeadm's JoinConfiguration (0600) and nowhere else."""
        return self.id + "." + self._secret

    def __repr__(self) -> str:
        return "BootstrapToken(" + self.id + ".****)"

    __str__ = __repr__


def parse_token(text: str) -> BootstrapToken:
    """A BootstrapToken, or DiscoveryError("config") saying what is wrong, never the token."""
    value = text.strip()
    parts = value.split(".")
    if len(parts) != 2:
        raise DiscoveryError(
            "config", "a kubeadm token is <6 [a-z0-9]>.<16 [a-z0-9]> (one dot, two parts)"
        )
    if not _ID.match(parts[0]):
        raise DiscoveryError("config", "the token id (before the dot) is not 6 of [a-z0-9]")
    if not _SECRET.match(parts[1]):
        raise DiscoveryError("config", "the token secret (after the dot) is not 16 of [a-z0-9]")
    return BootstrapToken(parts[0], parts[1])


def parse_pins(hashes: Sequence[str]) -> List[str]:
    """The pins' lowercase hex digests, as pubkeypin.Set.Allow accepts them."""
    found = []
    for pin in hashes:
        parts = pin.split(":")
        if len(parts) != 2:
            raise DiscoveryError("config", "a CA pin is sha256:<64 hex digits>")
        if parts[0].lower() != "sha256":
            raise DiscoveryError("config", "a CA pin's format must be sha256 (the only one known)")
        if not re.match(r"^[0-9a-fA-F]{64}$", parts[1]):
            raise DiscoveryError("config", "a sha256 CA pin needs 64 hex digits (32 bytes)")
        found.append(parts[1].lower())
    return found


def spki_hash(cert_der: bytes) -> str:
    """`sha256:<hex>` of the certificate's SubjectPublicKeyInfo (kubeadm's pin)."""
    cert = x509.parse(ssl.DER_cert_to_PEM_cert(cert_der).encode("ascii"))
    return "sha256:" + hashlib.sha256(cert.spki).hexdigest()


def endpoint_url(api_endpoint: str) -> str:
    """`https://host:port` from kubeadm's apiServerEndpoint (`host:port`, or an https URL)."""
    text = api_endpoint.strip()
    url = text if text.startswith("https://") else "https://" + text
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise DiscoveryError("config", "the API server endpoint is not host:port") from None
    if "://" in text and not text.startswith("https://"):
        raise DiscoveryError("config", "the API server endpoint must be host:port or https://")
    if not parts.hostname or parts.path.strip("/") or parts.query or parts.username:
        raise DiscoveryError("config", "the API server endpoint is not host:port")
    if port is None and not text.startswith("https://"):
        raise DiscoveryError("config", "the API server endpoint needs a port (host:6443)")
    return "https://" + parts.netloc


class Discovered(NamedTuple):
    ca_pem: bytes  # the cluster CA, as cluster-info's kubeconfig holds it (PEM)
    server: str  # the cluster's server URL, from that kubeconfig
    kubeconfig: bytes  # the verified kubeconfig text, byte for byte
    pinned: bool  # False: allow_unpinned, nothing but the JWS vouches for the CA
    ca_hashes: Tuple[str, ...]  # `sha256:<hex>` of each CA certificate, for messages


def _answer(url: str, status: int, body: bytes, headers: Dict[str, str]) -> Dict[str, str]:
    """cluster-info's data from one answer; DiscoveryError for every other outcome."""
    where = url + CLUSTER_INFO
    if status == 200:
        try:
            configmap = json.loads(body)
            data = configmap["data"]
        except (ValueError, KeyError, TypeError):
            raise DiscoveryError("not_kubeadm", where + " is not a ConfigMap with data") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise DiscoveryError("not_kubeadm", where + ": the ConfigMap's data is not strings")
        return data
    if status == 401:
        raise DiscoveryError(
            "forbidden", "the API server refused an anonymous request (401): anonymous-auth off"
        )
    if status in (403, 404) or status == 429 or status >= 500:
        why = {403: "not readable anonymously yet", 404: "not created yet"}.get(status, "")
        raise DiscoveryError(
            "waiting",
            "cluster-info answered " + str(status) + (": " + why if why else ""),
            retry_after(headers),
        )
    raise DiscoveryError("not_kubeadm", where + " answered " + str(status))


def fetch_cluster_info(url: str, context: ssl.SSLContext, timeout: float) -> Dict[str, str]:
    """GET cluster-info with no Authorization header (server.get sends none)."""
    try:
        status, body, headers = get(url, CLUSTER_INFO, context, timeout)
    except DiscoveryError:
        raise
    except ServerError as exc:
        cause = exc.__context__
        if isinstance(cause, ssl.SSLCertVerificationError) and exc.kind != "clock":
            code = cause.verify_code
            what = "does not name this endpoint" if code in HOSTNAME_ERRORS else "is not signed"
            raise DiscoveryError(
                "ca_mismatch",
                "the server's certificate " + what + " by the pinned CA (" + str(exc) + "): "
                "possible man-in-the-middle",
            ) from None
        raise DiscoveryError(exc.kind, str(exc), exc.retry_after) from None
    return _answer(url, status, body, headers)


def signed_kubeconfig(data: Dict[str, str], token: BootstrapToken) -> bytes:
    """The kubeconfig text of cluster-info once its JWS for `token` verifies."""
    content = data.get("kubeconfig", "")
    if not content:
        raise DiscoveryError(
            "not_kubeadm", "cluster-info has no kubeconfig: not set up for token discovery"
        )
    signature = data.get(JWS_PREFIX + token.id, "")
    if not signature:
        raise DiscoveryError(
            "token_rejected",
            "token id " + token.id + " is not valid for this cluster, has expired, or is not "
            "signed yet (cluster-info has no " + JWS_PREFIX + token.id + ")",
        )
    try:
        jws.verify(signature, content.encode("utf-8"), token.id, token.secret())
    except jws.JWSError as exc:
        raise DiscoveryError("token_rejected", str(exc) + "; nothing more was sent") from None
    return content.encode("utf-8")


def _cluster_ca(text: bytes) -> Tuple[str, bytes, List[x509.Cert]]:
    try:
        server, ca_data = kubeconfig.cluster(kubeconfig.load(text))
    except kubeconfig.KubeconfigError as exc:
        raise DiscoveryError("not_kubeadm", "cluster-info's kubeconfig: " + str(exc)) from None
    try:
        certs = [x509.parse(pem) for pem in x509.split(ca_data)]
    except x509.CertError:
        certs = []
    if not certs:
        raise DiscoveryError(
            "not_kubeadm", "cluster-info's certificate-authority-data holds no PEM certificate"
        )
    return server, ca_data, certs


def check_pins(certs: List[x509.Cert], pins: List[str]) -> Tuple[str, ...]:
    """The CA certificates' hashes when one of them is pinned (CheckAny); else ca_mismatch."""
    hashes = tuple("sha256:" + hashlib.sha256(c.spki).hexdigest() for c in certs)
    for value in hashes:
        digest = value.split(":", 1)[1]
        if any(hmac.compare_digest(digest, pin) for pin in pins):
            return hashes
    shown = ", ".join(h[:23] + "..." for h in hashes)
    raise DiscoveryError(
        "ca_mismatch",
        "none of the cluster CA's public keys (" + shown + ") is pinned: possible "
        "man-in-the-middle, or a pin of another cluster; nothing more was sent",
    )


def discover(
    api_endpoint: str,
    token: Union[BootstrapToken, str],
    ca_cert_hashes: Sequence[str],
    allow_unpinned: bool = False,
    timeout: float = 10.0,
) -> Discovered:
    """kubeadm's token discovery against `api_endpoint` (module doc); DiscoveryError else."""
    if isinstance(token, str):
        token = parse_token(token)
    pins = parse_pins(ca_cert_hashes)
    if not pins and not allow_unpinned:
        raise DiscoveryError(
            "config",
            "token discovery without a CA pin (caCertHashes) trusts whoever answers: "
            "pin the CA (sha256:<hex> of its public key) or set allow_unpinned",
        )
    url = endpoint_url(api_endpoint)
    try:
        first = signed_kubeconfig(fetch_cluster_info(url, bootstrap_context(), timeout), token)
        server, ca_pem, certs = _cluster_ca(first)
        if not pins:
            hashes = tuple("sha256:" + hashlib.sha256(c.spki).hexdigest() for c in certs)
            return Discovered(ca_pem, server, first, False, hashes)
        hashes = check_pins(certs, pins)
        context = _pinned(certs)
        again = fetch_cluster_info(url, context, timeout).get("kubeconfig", "").encode("utf-8")
    except DiscoveryError as exc:
        raise _scrubbed(exc, token) from None
    if again != first:
        raise DiscoveryError(
            "ca_mismatch",
            "the second cluster-info (over TLS verified against the pinned CA) differs from "
            "the first: refusing this server",
        )
    return Discovered(ca_pem, server, first, True, hashes)


def _pinned(certs: List[x509.Cert]) -> ssl.SSLContext:
    """TLS that trusts exactly the CA certificates, and checks the endpoint's name."""
    try:
        context = pinned_context(b"".join(c.pem for c in certs))
    except ssl.SSLError:
        raise DiscoveryError("not_kubeadm", "cluster-info's CA cannot be loaded for TLS") from None
    context.check_hostname = True
    return context


def _scrubbed(exc: DiscoveryError, token: BootstrapToken) -> DiscoveryError:
    """`exc`, its message certain not to hold the secret (the messages never build it in;
    this is the last guard, as text from the network can end up in them)."""
    text = str(exc)
    if token.secret() not in text:
        return exc
    return DiscoveryError(exc.kind, text.replace(token.secret(), "<redacted>"), exc.retry_after)


def server_time(
    api_endpoint: str,
    token: BootstrapToken,
    ca_cert_hashes: Sequence[str],
    allow_unpinned: bool = False,
    timeout: float = 10.0,
) -> float:
    """The API server's clock, for a device whose own is wrong: the CA is taken from
    cluster-info once its JWS and pin check (neither needs the time), then the Date header
    of /version over TLS to that CA with certificate times unchecked (the clock is what is
    in doubt), as the K3s path does with /ping (firstboot/server.py server_time)."""
    pins = parse_pins(ca_cert_hashes)
    if not pins and not allow_unpinned:
        raise DiscoveryError("config", "no CA pin to authenticate the server's clock by")
    url = endpoint_url(api_endpoint)
    try:
        kubeconfig_text = signed_kubeconfig(
            fetch_cluster_info(url, bootstrap_context(), timeout), token
        )
        _server, _ca, certs = _cluster_ca(kubeconfig_text)
        if pins:
            check_pins(certs, pins)
        context = pinned_context(b"".join(c.pem for c in certs), check_time=False)
        context.check_hostname = True
        _status, _body, headers = get(url, "/version", context, timeout)
    except DiscoveryError as exc:
        raise _scrubbed(exc, token) from None
    except ServerError as exc:
        raise DiscoveryError(exc.kind, str(exc), exc.retry_after) from None
    date = headers.get("date")
    if not date:
        raise DiscoveryError("waiting", "the API server sent no Date header")
    try:
        return email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        raise DiscoveryError("waiting", "the API server's Date header is not a date") from None
