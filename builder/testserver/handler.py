"""The HTTP side of the K3s test server: one request in, the answer K3s would give out.
The decisions (who may call what) are in rules.py; the state in server.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from builder.testserver import etcd, kubeapi, kubeobjects, rules

CONFIG = {
    "ClusterDomain": "cluster.local",
    "ClusterDNS": "10.43.0.10",
    "ServiceCIDR": "10.43.0.0/16",
}
NODE_CERTS = {"serving-kubelet.crt": "serving", "client-kubelet.crt": "client"}


class Handler(BaseHTTPRequestHandler):
    server_state: Any  # the K3sTestServer (server.py imports this module, not the reverse)
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        handshake = getattr(self.request, "do_handshake", None)
        if handshake is not None:
            handshake()  # TLS, in this connection's own thread (server.py)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are recorded, never printed (they carry credentials)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    # -- replies -----------------------------------------------------------------

    def _reply(
        self,
        status: int,
        body: bytes,
        kind: str = "text/plain",
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str | None = None) -> None:
        text = message or rules.error_message(status)
        self._reply(status, rules.status_body(status, text), "application/json")

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length", "0") or "0")
        return self.rfile.read(length) if length else b""

    def _cert_user(self) -> str | None:
        """The user of a client certificate that client-ca signed (TLS verified it)."""
        getpeercert = getattr(self.connection, "getpeercert", None)
        cert = getpeercert() if getpeercert else None
        if not cert:
            return None
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return str(value)
        return None

    # -- dispatch ----------------------------------------------------------------

    def _dispatch(self) -> None:
        state = self.server_state
        state.phases.first_request()
        body = self._body()
        where = rules.route(self.path)
        if where.kind == "open":
            state.record(self, where, 0)
            return self._open(where)
        caller = state.authenticator().authenticate(
            self.headers.get("Authorization"), self._cert_user(), state.apiserver_up()
        )
        if where.kind == "apiserver":
            state.record(self, where, caller.error)
            return self._admitted(lambda: self._apiserver(caller, body))
        allowed = {
            "agent": rules.AGENT_GROUPS,
            "server": rules.SERVER_GROUPS,
            "node": rules.NODE_GROUPS,
        }[where.kind]
        denied = rules.authorize(caller, allowed)
        state.record(self, where, denied)
        if denied:
            return self._error(denied)
        if where.method is not None and self.command != where.method:
            return self._error(405, f"method {self.command} not allowed")
        if where.kind == "agent" and state.phases.active("throttle"):
            return self._too_many()
        if where.kind == "agent":
            return self._admitted(lambda: self._agent(where.name, caller, body))
        return self._server_route(where.name, body)

    def _too_many(self) -> None:
        """429 as k8s WithMaxInFlightLimit answers it (K3s auth.MaxInFlight)."""
        retry = str(self.server_state.admission.retry_after)
        self._reply(
            429,
            rules.status_body(429, "Too many requests, please try again later."),
            "application/json",
            {"Retry-After": retry},
        )

    def _admitted(self, answer: Callable[[], None]) -> None:
        """`answer` while holding an in-flight slot for the service time; 429 when none is free."""
        admission = self.server_state.admission
        if not admission.enter():
            return self._too_many()
        started = admission.serve()
        try:
            answer()
        finally:
            admission.leave(started)

    def _open(self, where: rules.Route) -> None:
        state = self.server_state
        if where.name == "cacerts":
            if state.phases.active("cacerts_error"):
                code = state.cacerts_error_code
                return self._reply(code, f"{code} server CA is not readable yet\n".encode())
            return self._reply(200, state.ca.cacerts)
        if where.name == "ping":
            return self._reply(200, b"pong", "text/plain; charset=utf-8")
        return self._reply(404, b"404 page not found\n", "text/plain; charset=utf-8")

    def _agent(self, name: str, caller: rules.Caller, body: bytes) -> None:
        state = self.server_state
        core = not state.phases.active("core_not_ready")
        if name == "readyz":
            return self._reply(200, b"ok") if core else self._error(503, "runtime core not ready")
        if name == "config":
            return self._reply(200, json.dumps(CONFIG).encode(), "application/json")
        if name == "apiservers":
            up = [f"127.0.0.1:{state.port}"] if state.apiserver_up() else []
            return self._reply(200, json.dumps(up).encode(), "application/json")
        if name in ("client-ca.crt", "server-ca.crt"):
            pem = state.client_ca.pem if name == "client-ca.crt" else state.ca.cacerts
            return self._reply(200, pem)
        if name in NODE_CERTS:
            return self._node_cert(NODE_CERTS[name], caller, body, core)
        return self._error(500, "this test server does not sign " + name)

    def _node_cert(self, kind: str, caller: rules.Caller, body: bytes, core: bool) -> None:
        node = (self.headers.get("k3s-Node-Name") or "").lower()
        password = self.headers.get("k3s-Node-Password") or ""
        if not node:
            return self._error(400, "node name not set")
        if not password:
            return self._error(400, "node password not set")
        if caller.user.startswith("system:node:") and caller.user != f"system:node:{node}":
            return self._error(400, "header node name does not match auth node name")
        if not core:
            return self._error(503, "runtime core not ready")
        status, reply = self.server_state.sign_node_csr(kind, node, password, body)
        if status != 200:
            return self._error(status, reply.decode().strip())
        return self._reply(200, reply)

    def _server_route(self, name: str, body: bytes) -> None:
        state = self.server_state
        if name == "server-bootstrap" or name.startswith("db/"):
            if not state.etcd:
                return self._error(400, "etcd disabled")
            return self._etcd(name, body)
        if name == "encrypt/status":
            if self.server_state.phases.active("core_not_ready"):
                return self._error(500, "secret-encrypt error ID 10000")
            status = {"Enable": False, "Stage": "start", "HashMatch": True}
            return self._reply(200, json.dumps(status).encode(), "application/json")
        return self._error(500, f"{name}: not supported by the test server")

    def _etcd(self, name: str, body: bytes) -> None:
        """Managed etcd's routes (etcd.py): bootstrap data, the member list, a member added."""
        state = self.server_state
        if name == "server-bootstrap":
            return self._reply(200, b"{}", "application/json")
        if name == "db/members":
            try:
                member, peer = etcd.parse_add(body)
            except (ValueError, KeyError, TypeError):
                return self._error(400, "the body is not a member")
            state.add_etcd_member(etcd.node_of(member), peer, member)
        info = etcd.info({"members": state.etcd_members()})
        return self._reply(200, json.dumps(info).encode(), "application/json")

    def _apiserver(self, caller: rules.Caller, body: bytes) -> None:
        """The embedded kube-apiserver behind the supervisor: nodes only."""
        state = self.server_state
        if not state.apiserver_up():
            return self._error(503, "apiserver not ready")
        if self.headers.get("Authorization") == f"Bearer {state.kube.admin_token}":
            headers = {k.lower(): v for k, v in self.headers.items()}
            return send(self, state.kube.answer(self.command, self.path, headers, body))
        if caller.error or caller.user in ("node", "server"):  # no Basic at the apiserver
            return self._error(401, "Unauthorized")
        path = self.path.split("?", 1)[0]
        node = caller.user.removeprefix("system:node:")
        if not caller.user.startswith("system:node:"):
            return self._error(403, kubeobjects.forbidden(caller.user, self.command, path))
        if path == "/api/v1/nodes" and self.command == "POST":
            try:
                wanted = json.loads(body)["metadata"]["name"]
            except (ValueError, KeyError, TypeError):
                return self._error(400, "the body is not a Node")
            if wanted != node:
                return self._error(403, f"node {node!r} cannot create node {wanted!r}")
            created = state.create_node(node)
            return self._reply(201 if created else 409, body, "application/json")
        if path == f"/api/v1/nodes/{node}" and self.command == "GET":
            if node in state.registered_nodes():
                reply = {"kind": "Node", "metadata": {"name": node}}
                return self._reply(200, json.dumps(reply).encode(), "application/json")
            return self._error(404, f'nodes "{node}" not found')
        if path.startswith("/api/v1/"):  # the Node authorizer allows a kubelet nothing else here
            return self._error(403, kubeobjects.forbidden(caller.user, self.command, path))
        return self._error(404, "the server could not find the requested resource")


def send(handler: BaseHTTPRequestHandler, reply: kubeapi.Reply) -> None:
    """Write `reply` on an HTTP/1.1 handler; a watch streams in chunks until it ends."""
    handler.send_response(reply.status)
    handler.send_header("Content-Type", reply.content_type)
    if reply.stream is None:
        handler.send_header("Content-Length", str(len(reply.body)))
        handler.end_headers()
        handler.wfile.write(reply.body)
        return
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    try:
        for chunk in reply.stream:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            handler.wfile.flush()
        handler.wfile.write(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        handler.close_connection = True
