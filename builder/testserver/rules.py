"""Who may do what on the K3s test server, decided as the K3s supervisor decides it.

Every rule the test server follows, and the K3s source it follows (k3s-io/k3s, v1.30-v1.34;
router = pkg/server/router.go, later pkg/server/handlers/router.go):

| rule | K3s file:function |
|---|---|
| /cacerts, /ping need no credentials; /cacerts is server-ca.crt byte for byte | handlers.go:CACerts, Ping |
| a read error of server-ca.crt makes /cacerts a 5xx (here: the cacerts_error phase) | handlers.go:CACerts |
| auth runs only on a matched route; unmatched paths go to the apiserver proxy | router.go:router (gorilla NotFound) |
| the authenticator is basic-auth over server/cred/passwd plus x509 over client-ca | pkg/authenticator/authenticator.go:FromArgs |
| passwd users: `node` -> k3s:agent, `server` -> k3s:server; node's password is the agent token's or the server token's | pkg/passwd/passwd.go:EnsureUser; daemons/control/deps:genUsers |
| wrong Basic user/password, invalid or expired Bearer once the apiserver is up -> 401 `not authorized` | pkg/server/auth/auth.go:doAuth; util/apierrors.go:SendError |
| no credentials, or any Bearer before the apiserver authenticator is attached -> 403 `forbidden` | auth.go:doAuth; daemons/control/server.go:waitForAPIServerHandlers |
| authenticated but not in the route's groups -> 403 `forbidden` | auth.go:HasRole |
| agent routes (readyz, config, apiservers, client-ca.crt, server-ca.crt, *-kubelet.crt, client-kube-proxy.crt, client-k3s-controller.crt): k3s:agent, system:nodes, system:bootstrappers | router.go (authed) |
| server routes (server-bootstrap, encrypt/status; token, encrypt/config, cert/cacerts are PUT only): k3s:server | router.go (serverAuthed); handlers/token.go; secrets-encrypt.go; handlers/cert.go |
| /v1-k3s/connect: system:nodes only | router.go (nodeAuthed) |
| readyz: 503 `runtime core not ready` until the core runs, then 200 `ok` | handlers.go:Readyz |
| agent routes over the in-flight limit -> 429 with Retry-After: 1 (here: the throttle phase, or max_inflight) | handlers/router.go (auth.MaxInFlight) |
| in-flight limit: a counter; one request over it is refused at once (no queue) with 429, a Status body `Too many requests, please try again later.` (reason TooManyRequests) and `Retry-After` (K3s and k8s: 1 s); long-running requests exempt (none here) | pkg/server/auth/auth.go:MaxInFlight -> k8s apiserver/pkg/server/filters/maxinflight.go:WithMaxInFlightLimit, tooManyRequests |
| the limit applies after authentication, to agent routes (K3s: 20 read-only + 10 mutating, two pools; here ONE pool of max_inflight) and to the apiserver (kube-apiserver --max-requests-inflight 400 + --max-mutating-requests-inflight 200); /cacerts, /ping have none | handlers/router.go (authed.Use); k8s cmd/kube-apiserver/app/options (GenericServerRunOptions); server/config.go:DefaultBuildHandlerChain |
| bootstrap tokens `[a-z0-9]{6}.[a-z0-9]{16}`, checked by the apiserver: secret match, not expired -> system:bootstrappers | pkg/kubeadm/token.go; k8s plugin/pkg/auth/authenticator/token/bootstrap |
| kubelet certs: `k3s-Node-Name` / `k3s-Node-Password` required (400), core not ready -> 503, stored password differs -> 403 | pkg/nodepassword/validate.go:GetNodeAuthValidator |
| kubelet cert auth: the cert's node name must equal the header's (400) | validate.go (header node name does not match) |
| server-bootstrap without managed etcd -> 400 `etcd disabled`; with it (etcd=True) 200 and the bootstrap data | handlers.go:Bootstrap |
| /db/info (GET; k3s:server): the etcd member list `{"members": [{"name", "peerURLs", "clientURLs"}]}` a joining server reads; /db/members (POST; k3s:server) is the stand-in's MemberAddAsLearner (real K3s calls etcd on :2379) | pkg/etcd/etcd.go:handler, infoHandler, join |
| apiserver proxy: 503 `apiserver not ready` before it runs; then the apiserver's own authn (no Basic, anonymous off -> 401) | handlers.go:APIServer; daemons/control/server.go:apiServer |
| error bodies are a metav1.Status JSON | util/apierrors.go:SendError |
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import threading
import time
from dataclasses import dataclass, field

PREFIX = "/v1-k3s/"
AGENT_GROUPS = frozenset({"k3s:agent", "system:nodes", "system:bootstrappers"})
SERVER_GROUPS = frozenset({"k3s:server"})
NODE_GROUPS = frozenset({"system:nodes"})
AGENT_ROUTES = frozenset(
    {
        "readyz",
        "config",
        "apiservers",
        "client-ca.crt",
        "server-ca.crt",
        "serving-kubelet.crt",
        "client-kubelet.crt",
        "client-kube-proxy.crt",
        "client-k3s-controller.crt",
    }
)
SERVER_ROUTES = {
    "server-bootstrap": None,
    "encrypt/status": None,
    "token": "PUT",
    "encrypt/config": "PUT",
    "cert/cacerts": "PUT",
}
NODE_ROUTES = frozenset({"connect"})
DB_ROUTES = {"/db/info": "GET", "/db/members": "POST"}  # etcd.go:handler, before the router
BOOTSTRAP = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
PHASES = ("cacerts_error", "apiserver_down", "core_not_ready", "throttle")
REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "AlreadyExists",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def status_body(code: int, message: str, details: dict[str, str] | None = None) -> bytes:
    """A metav1.Status, as util.SendError writes it (the apiserver adds `details`: name, kind)."""
    status: dict[str, object] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": REASONS.get(code, "Unknown"),
        "code": code,
    }
    if details:
        status["details"] = details
    return json.dumps(status).encode()


@dataclass(frozen=True)
class Caller:
    """The outcome of doAuth: `error` 401/403 or 0 when authenticated as `user` in `groups`."""

    error: int
    user: str = ""
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Route:
    kind: str  # open, agent, server, node, apiserver
    name: str
    method: str | None = None  # the only method allowed, when one is


def route(path: str) -> Route:
    clean = path.split("?", 1)[0]
    if clean in ("/cacerts", "/ping") or clean.startswith("/static/"):
        return Route("open", clean.lstrip("/"))
    if clean in DB_ROUTES:
        return Route("server", clean.lstrip("/"), DB_ROUTES[clean])
    if clean.startswith(PREFIX):
        rest = clean[len(PREFIX) :]
        if rest in AGENT_ROUTES:
            return Route("agent", rest)
        if rest in SERVER_ROUTES:
            return Route("server", rest, SERVER_ROUTES[rest])
        if rest in NODE_ROUTES:
            return Route("node", rest)
    return Route("apiserver", clean)


@dataclass
class Phases:
    """Server phases, each active for a number of seconds counted from the first request
    the server sees (so a QEMU guest meets them whatever its boot takes), or from `set`."""

    seconds: dict[str, float] = field(default_factory=dict)
    _until: dict[str, float] = field(default_factory=dict)
    _started: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        unknown = set(self.seconds) - set(PHASES)
        if unknown:
            raise ValueError(f"unknown server phase {sorted(unknown)[0]!r}")

    def first_request(self) -> None:
        with self._lock:
            if not self._started:
                self._started = True
                start = time.monotonic()
                for phase, seconds in self.seconds.items():
                    self._until.setdefault(phase, start + seconds)

    def set(self, phase: str, seconds: float) -> None:
        """Make `phase` active for `seconds` from now (0 ends it)."""
        if phase not in PHASES:
            raise ValueError(f"unknown server phase {phase!r}")
        with self._lock:
            self._until[phase] = time.monotonic() + seconds

    def active(self, phase: str) -> bool:
        with self._lock:
            return time.monotonic() < self._until.get(phase, 0.0)


class Authenticator:
    """basic-auth over the passwd users, x509 over client-ca (done by TLS), and, once the
    apiserver runs, bootstrap tokens."""

    def __init__(self, passwords: dict[str, str], tokens: dict[str, tuple[str, float]]) -> None:
        self.passwords = passwords  # user -> password
        self.tokens = tokens  # id -> (secret, expiry as time.time(), 0 = never)

    def authenticate(self, header: str | None, cert_user: str | None, apiserver_up: bool) -> Caller:
        if cert_user is not None:  # x509: CN system:node:<n>, O system:nodes
            return Caller(0, cert_user, frozenset({"system:nodes", "system:authenticated"}))
        if not header:
            return Caller(403)
        scheme, _, value = header.partition(" ")
        if scheme == "Basic":
            return self._basic(value)
        if scheme == "Bearer":
            if not apiserver_up:
                return Caller(403)
            return self._bearer(value.strip())
        return Caller(403)

    def _basic(self, value: str) -> Caller:
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return Caller(401)
        known = self.passwords.get(user)
        if not sep or known is None or not hmac.compare_digest(password, known):
            return Caller(401)
        group = "k3s:server" if user == "server" else "k3s:agent"
        return Caller(0, user, frozenset({group, "system:authenticated"}))

    def _bearer(self, token: str) -> Caller:
        match = BOOTSTRAP.match(token)
        if not match:
            return Caller(401)
        entry = self.tokens.get(match.group(1))
        if entry is None or not hmac.compare_digest(entry[0], match.group(2)):
            return Caller(401)
        if entry[1] and time.time() >= entry[1]:
            return Caller(401)
        groups = {"system:bootstrappers", "system:bootstrappers:k3s:default-node-token"}
        return Caller(0, "system:bootstrap:" + match.group(1), frozenset(groups))


def authorize(caller: Caller, allowed: frozenset[str]) -> int:
    """0 when the caller may use a route guarded by `allowed`, else 401/403 (auth.go:doAuth)."""
    if caller.error:
        return caller.error
    return 0 if caller.groups & allowed else 403


def error_message(code: int) -> str:
    return {401: "not authorized", 403: "forbidden"}.get(code, REASONS.get(code, "error"))
