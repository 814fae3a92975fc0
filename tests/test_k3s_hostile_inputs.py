"""A hostile review of issue 24's inputs (engineer R): values that would carry a secret into a
world-readable file, or that K3s's own YAML parser would refuse, and what the device reads
from the network.

Each test is what an attacker or a demanding user would try; each failed on the code before
its fix."""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from builder.config import k3sconfig
from builder.config.fleet import load
from builder.util.errors import UserError
from firstboot import joinconfig, k3sfiles, reinit, resolve
from firstboot.paths import Root
from firstboot.retry import Terminal
from tests.conftest import REPO

SERVER = "https://k3s.example.net:6443"
SECRET = "s3cr3t-Pa55"


def fleet(tmp_path: Path, k3s_config: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"name: f\ncluster:\n  server: {SERVER}\n  token_env: TOK\n  role: server\n"
        f"  k3s_config: {{{k3s_config}}}\ndevices:\n  - hostname: pi-1\n"
    )
    return path


# -- a credential in any k3s_config value would sit in /etc/pifleet/join.json (0644) ------------

CREDENTIALS = (
    f"etcd-s3-proxy: 'http://proxyuser:{SECRET}@proxy.lan:3128'",
    f"etcd-s3-endpoint: 'https://AKIAEXAMPLE:{SECRET}@s3.lan'",
    f"kube-apiserver-arg: ['etcd-servers=https://root:{SECRET}@etcd.lan:2379']",
    f"datastore-endpoint: 'host=db.lan user=k3s PASSWORD = {SECRET}'",
    f"etcd-arg: ['listen-metrics-urls=http://127.0.0.1:2381', 'x=mysql://u:{SECRET}@tcp(h)/d']",
    f"etcd-s3-session-token: '{SECRET}'",  # K3s server.go: s3-session-token, its alias
)


@pytest.mark.parametrize("value", CREDENTIALS)
def test_a_password_in_any_k3s_config_value_is_refused_unshown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("TOK", "K10" + "ab" * 32 + "::server:x")
    with pytest.raises(UserError) as info:
        config = load(fleet(tmp_path, value))
        pytest.fail(f"accepted, join.json would hold {k3sconfig.for_role(config, 'server')}")
    message = str(info.value)
    assert f"cluster.k3s_config.{value.split(':')[0]}" in message, message
    assert "credential" in message and "0644" in message, message
    assert SECRET not in message, "the refusal shows the password"


@pytest.mark.parametrize(
    "value",
    (
        "etcd-s3-proxy: 'http://proxy.lan:3128'",
        "etcd-s3-endpoint: 'https://user@s3.lan'",
        "kube-apiserver-arg: ['oidc-issuer-url=https://issuer.lan/realms/x']",
        "datastore-endpoint: 'https://etcd1.lan:2379,https://etcd2.lan:2379'",
    ),
)
def test_values_without_a_password_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("TOK", "K10" + "ab" * 32 + "::server:x")
    config = load(fleet(tmp_path, value))
    assert value.split(":")[0] in k3sconfig.for_role(config, "server")


# -- config.yaml as K3s's go-yaml v2 reads it -------------------------------------------------

# go-yaml v2 refuses these in a double-quoted scalar (scannerc.go: a \u escape of a surrogate,
# "found invalid Unicode character escape code"; readerc.go: a raw DEL, C1 control or U+FFFE)
GO_YAML_REFUSES = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}|\\u[dD][c-fC-F][0-9a-fA-F]{2}|[\x7f-\x9f\ufffe]"
)


@pytest.mark.parametrize(
    "value",
    (
        "/var/lib/snapshots/\U0001f4e6",  # a character above U+FFFF: JSON's surrogate pair
        "caf\u00e9 \u2028 \u0085 \x7f end",  # a line separator, NEL and DEL stay one scalar
        'quote " backslash \\ newline \n # not: a comment\n---\ntoken: x',
    ),
)
def test_config_yaml_values_read_back_as_go_yaml_reads_them(value: str) -> None:
    text = k3sfiles.config_yaml(
        "https://k3s.lan:6443",
        "pi-1",
        [],
        [],
        [],
        extra={"etcd-snapshot-dir": value, "etcd-arg": [value]},
    ).decode()
    assert not GO_YAML_REFUSES.search(text), f"K3s's YAML parser refuses: {text!r}"
    assert text.isascii()
    document = yaml.safe_load(text)
    assert document["etcd-snapshot-dir"] == value and document["etcd-arg"] == [value]
    assert document["token-file"] == k3sfiles.TOKEN_PATH and "token" not in document


# -- the agent's DNS client (firstboot/resolve.py) against a hostile network --------------------


class HostileDns:
    """A DNS server on 127.0.0.1 that logs each question and answers it as `script` says: a
    list of (how, address) per question, sent in order; `how` is "spoof" (the right id, from
    another port), "wrong-id", "other-question", "truncated" or "real" (from its own port)."""

    def __init__(self, script: list[tuple[str, str]]) -> None:
        self.script = script
        self.asked: list[tuple[str, int]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.spoofer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.spoofer.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                packet, peer = self.sock.recvfrom(512)
            except OSError:
                return
            question = packet[12:]
            qtype = struct.unpack(">H", question[-4:-2])[0]
            self.asked.append((question[:-4].decode("latin-1"), qtype))
            for how, address in self.script:
                sender = self.spoofer if how == "spoof" else self.sock
                try:
                    sender.sendto(self.reply(packet, how, address, qtype), peer)
                except OSError:  # closed by the test
                    return
                time.sleep(0.02)

    @staticmethod
    def reply(packet: bytes, how: str, address: str, qtype: int) -> bytes:
        ident = struct.unpack(">H", packet[:2])[0]
        if how == "wrong-id":
            ident ^= 0x5A5A
        question = packet[12:]
        if how == "other-question":
            question = b"\x04evil\x07example\x00" + question[-4:]
        if qtype != 1:
            return struct.pack(">HHHHHH", ident, 0x8180, 1, 0, 0, 0) + question
        answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(address)
        if how == "truncated":
            answer = answer[:-2]  # rdlength says 4, two bytes follow
        return struct.pack(">HHHHHH", ident, 0x8180, 1, 1, 0, 0) + question + answer

    def close(self) -> None:
        self.sock.close()
        self.spoofer.close()


@pytest.mark.parametrize("first", ["spoof", "wrong-id", "other-question"])
def test_the_dns_client_takes_only_the_servers_answer_to_its_question(first: str) -> None:
    """A forged answer (another source port, another id, another question) comes first; the
    agent must ignore it, as Go's resolver in K3s does, and take the real one after it."""
    dns = HostileDns([(first, "6.6.6.6"), ("real", "10.1.2.3")])
    try:
        found = resolve.ask("127.0.0.1", dns.port, "k3s.lan", timeout=2.0)
    finally:
        dns.close()
    assert "6.6.6.6" not in found, f"a forged answer ({first}) was taken"
    assert found == ["10.1.2.3"], found
    assert [t for _, t in dns.asked] == [1, 28]


def test_a_truncated_answer_is_no_answer_not_a_crash() -> None:
    dns = HostileDns([("truncated", "10.1.2.3")])
    try:
        assert resolve.ask("127.0.0.1", dns.port, "k3s.lan", timeout=0.3) == []
    finally:
        dns.close()


def test_a_search_domain_dns_cannot_carry_is_skipped_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """resolv.conf comes from DHCP: a search domain with an empty or 64-character label."""
    (tmp_path / "etc").mkdir()
    dns = HostileDns([("real", "10.1.2.3")])
    (tmp_path / "etc/resolv.conf").write_text(
        f"nameserver 127.0.0.1\nsearch a..b {'x' * 64}.lan\noptions ndots:5\n"
    )
    monkeypatch.setenv("PIFLEET_DNS_PORT", str(dns.port))
    try:
        assert resolve.as_k3s(Root(tmp_path), "k3s") == ["10.1.2.3"]
    finally:
        dns.close()


def test_a_server_dripping_forged_answers_cannot_hold_the_agent_past_its_timeout() -> None:
    dns = HostileDns([("wrong-id", "6.6.6.6")] * 100)
    started = time.monotonic()
    try:
        assert resolve.ask("127.0.0.1", dns.port, "k3s.lan", timeout=0.4) == []
    finally:
        dns.close()
    assert time.monotonic() - started < 2.0


def test_only_three_nameservers_are_asked_as_go_does(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    servers = "".join(f"nameserver 127.0.0.{i}\n" for i in range(1, 9))
    (tmp_path / "etc/resolv.conf").write_text(servers)
    assert resolve.resolv_conf(Root(tmp_path))[0] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


# -- a re-flashed first server's probe of the others (firstboot/reinit.py) ----------------------


class CacertsServer:
    """HTTPS on 127.0.0.1 serving `cacerts` at /cacerts with `cert`/`key`; logs each request."""

    def __init__(self, cacerts: bytes, cert: Path, key: Path) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                seen.append((self.path, dict(self.headers.items())))
                self.send_response(200)
                self.send_header("Content-Length", str(len(cacerts)))
                self.end_headers()
                self.wfile.write(cacerts)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def probe(tmp_path: Path, files: dict[str, bytes], cert: Path, key: Path) -> list[str]:
    """Run the first server's probe against one other server; [] or the refusal's line."""
    from builder.cluster.cahash import k3s_ca_hash

    root = tmp_path / "first"
    (root / "var/lib/rancher/k3s/server/tls").mkdir(parents=True)
    (root / "var/lib/rancher/k3s/server/tls/server-ca.crt").write_bytes(files["server-ca.crt"])
    other = CacertsServer(files["server-ca.crt"], cert, key)
    join = joinconfig.JoinConfig(server=f"https://127.0.0.1:{other.port}")
    device = joinconfig.DeviceConfig(role="server", cluster_init=True, tls_san=["127.0.0.1"])
    try:
        reinit.refuse_second_cluster(
            Root(root), join, device, "edge-srv-1", k3s_ca_hash(files["server-ca.crt"])
        )
        return []
    except Terminal as exc:
        return [str(exc)]
    finally:
        other.close()
        assert all("authorization" not in repr(h).lower() for _p, h in other.seen)


@pytest.fixture(scope="module")
def ca_files() -> dict[str, bytes]:
    from builder.cluster.ca import generate

    return {f.path: f.data for f in generate()}


def test_a_host_replaying_the_public_ca_cannot_block_cluster_init(
    tmp_path: Path, ca_files: dict[str, bytes]
) -> None:
    """/cacerts answers anyone, so anyone on the LAN has the CA; at a server's name it serves
    it with its own self-signed certificate. That is no server of this cluster."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", "/CN=k3s", "-keyout", str(tmp_path / "evil.key"),
         "-out", str(tmp_path / "evil.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    refused = probe(tmp_path, ca_files, tmp_path / "evil.crt", tmp_path / "evil.key")
    assert refused == [], f"a replayed CA blocked cluster-init: {refused}"


def test_a_server_whose_certificate_the_ca_signed_still_blocks_cluster_init(
    tmp_path: Path, ca_files: dict[str, bytes]
) -> None:
    (tmp_path / "srv.pem").write_bytes(ca_files["server-ca.pem"])
    (tmp_path / "srv.key").write_bytes(ca_files["server-ca.key"])
    (tmp_path / "srv.key").chmod(0o600)
    refused = probe(tmp_path, ca_files, tmp_path / "srv.pem", tmp_path / "srv.key")
    assert len(refused) == 1 and "already serves this cluster's CA" in refused[0], refused


# -- a final newline passes `^...$`: names checked with \Z -------------------------------------


def test_retire_refuses_a_name_with_a_final_newline_before_any_request(tmp_path: Path) -> None:
    from builder.testserver.server import K3sTestServer

    with K3sTestServer(state_dir=tmp_path / "k3s", etcd=True) as server:
        server.preregister("edge-srv-2", "old-node-password")
        proc = subprocess.run(
            [sys.executable, "-m", "builder", "node", "retire", "edge-srv-2\n",
             "--kubeconfig", str(server.kubeconfig), "--yes"],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        asked = [(r.method, r.path) for r in server.requests]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "not a node name" in proc.stderr
    assert asked == [], f"the apiserver was asked: {asked}"


@pytest.mark.parametrize(
    "device",
    (
        {"k3s_config": {"server\n": "https://evil.lan:6443"}},
        {"hostname": "pi-1\n"},
    ),
)
def test_the_agent_refuses_seed_names_with_a_final_newline(device: dict[str, object]) -> None:
    with pytest.raises(joinconfig.JoinConfigError):
        joinconfig.load_device_config(json.dumps(device).encode(), "device.json")


def test_the_agent_refuses_a_proxy_name_with_a_final_newline() -> None:
    with pytest.raises(joinconfig.JoinConfigError):
        joinconfig.check_proxy({"HTTP_PROXY\n": "http://p.lan:3128"}, "join.json")


def test_a_registry_host_with_a_final_newline_is_refused(tmp_path: Path) -> None:
    from builder.config.registries import read

    def fail(key: str, why: str) -> UserError:
        return UserError(f"{key}: {why}")

    with pytest.raises(UserError, match="not a registry host"):
        read({"mirrors": {"docker.io\n": {"endpoint": []}}}, "cluster.registries",
             lambda t: tmp_path / t, fail)  # fmt: skip


# -- node retire against an apiserver that answers junk ------------------------------------------


class JunkApiserver:
    """Plain HTTP on 127.0.0.1 that answers the Node as found, and `pods` (a JSON text) for
    the pod list; logs each request with its headers."""

    def __init__(self, pods: bytes) -> None:
        self.seen: list[tuple[str, str]] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def answer(self) -> None:
                seen.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                body = pods if self.path.startswith("/api/v1/pods") else b'{"kind": "Node"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PATCH = do_POST = do_DELETE = answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def retire_against(
    tmp_path: Path, server: JunkApiserver, timeout: str
) -> tuple[subprocess.CompletedProcess[str], list[tuple[str, str]]]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{server.port}'}}}}]\n"
        "users: [{name: u, user: {token: not-a-real-token}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "builder", "node", "retire", "edge-srv-2",
             "--kubeconfig", str(kubeconfig), "--yes", "--timeout", timeout],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        server.close()
    return proc, server.seen


@pytest.mark.parametrize(
    "pods",
    (
        b'{"items": [{"metadata": {"name": "web-1"}}]}',  # no namespace
        b'{"items": [{"spec": {}}]}',  # no metadata
        b'{"items": ["web-1"]}',
        b'{"items": {"web-1": 1}}',
        b'[{"metadata": {"name": "web-1", "namespace": "default"}}]',
    ),
)
def test_retire_against_an_apiserver_answering_junk_is_one_line(
    tmp_path: Path, pods: bytes
) -> None:
    proc, seen = retire_against(tmp_path, JunkApiserver(pods), "10")
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "pods on edge-srv-2" in lines[0], proc.stderr
    assert ("DELETE", "/api/v1/nodes/edge-srv-2") not in seen, "deleted after junk"


@pytest.mark.parametrize("field", ("annotations", "ownerReferences"))
def test_retire_reads_a_pods_odd_annotations_or_owners_without_a_crash(
    tmp_path: Path, field: str
) -> None:
    """The pod is evicted; this apiserver never lets it go, so the --timeout ends it."""
    pods = b'{"items": [{"metadata": {"name": "w", "namespace": "d", "%s": 5}}]}' % field.encode()
    proc, seen = retire_against(tmp_path, JunkApiserver(pods), "2")
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert ("POST", "/api/v1/namespaces/d/pods/w/eviction") in seen


# -- YAML types where text is expected -------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "line", "expected"),
    (
        ("cluster", "k3s_config: {5: x}", "cluster.k3s_config.5: not a K3s flag"),
        ("cluster", "k3s_config: {null: x}", "cluster.k3s_config.None: not a K3s flag"),
        ("device", "k3s_config: {5: x}", "devices[0].k3s_config.5: not a K3s flag"),
        ("cluster", "registries: {configs: {r.lan: {tls: {ca_file: 5}}}}", "tls.ca_file: must"),
        ("cluster", "registries: {configs: {r.lan: {tls: {key_file: [k]}}}}", "tls.key_file:"),
        ("cluster", "registries: {configs: {r.lan: {tls: {cert_file: ''}}}}", "tls.cert_file:"),
    ),
)
def test_a_non_text_name_or_file_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, line: str, expected: str
) -> None:
    monkeypatch.setenv("TOK", "K10" + "ab" * 32 + "::server:x")
    cluster, device = (f"  {line}\n", "") if where == "cluster" else ("", f"    {line}\n")
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"name: f\ncluster:\n  server: {SERVER}\n  token_env: TOK\n  role: server\n{cluster}"
        f"devices:\n  - hostname: pi-1\n{device}"
    )
    with pytest.raises(UserError) as info:
        load(path)
    assert expected in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_an_empty_list_is_left_out_of_config_yaml() -> None:
    """K3s reads `kube-proxy-arg:` (null) as `--kube-proxy-arg=`: one empty argument."""
    text = k3sfiles.config_yaml(
        "https://k3s.lan:6443", "pi-1", [], [], [], extra={"kube-proxy-arg": [], "disable": []}
    ).decode()
    document = yaml.safe_load(text)
    assert "kube-proxy-arg" not in document and "disable" not in document, text


@pytest.mark.parametrize(
    ("line", "expected"),
    (
        ("node_ip: 'fe80::1%eth0'", "a zone"),
        ("advertise_address: 'fe80::1%eth0'", "a zone"),
        ("node_ip: 127.0.0.1", "loopback"),
        ("node_ip: '10.0.0.5,::1'", "loopback"),
        ("node_ip: 169.254.1.1", "link-local"),
        ("node_ip: 0.0.0.0", "all-zeros"),
        ("node_external_ip: 224.0.0.1", "multicast"),
    ),
)
def test_a_node_address_the_kubelet_or_go_refuses_is_refused_at_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str, expected: str
) -> None:
    monkeypatch.setenv("TOK", "K10" + "ab" * 32 + "::server:x")
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"name: f\ncluster:\n  server: {SERVER}\n  token_env: TOK\n  role: server\n"
        f"devices:\n  - hostname: pi-1\n    {line}\n"
    )
    with pytest.raises(UserError) as info:
        load(path)
    assert f"devices[0].{line.split(':')[0]}:" in str(info.value), str(info.value)
    assert expected in str(info.value), str(info.value)


def test_ordinary_node_addresses_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOK", "K10" + "ab" * 32 + "::server:x")
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"name: f\ncluster:\n  server: {SERVER}\n  token_env: TOK\n  role: server\n"
        "devices:\n  - hostname: pi-1\n    node_ip: '192.168.1.10,2001:db8::10'\n"
        "    advertise_address: 192.168.1.10\n"
    )
    assert load(path).devices[0].node_ip == ("192.168.1.10", "2001:db8::10")


# -- registry rewrites K3s would skip: Python's re takes them, Go's regexp does not --------------


@pytest.mark.parametrize(
    ("pattern", "expected"),
    (
        ("^rancher/(?!pause)(.*)", "a lookahead"),
        ("(?<=library/)(.*)", "a lookbehind"),
        ("^(a)/\\1", "a backreference"),
        ("[\\1]", "a backreference"),
        ("^(?P<x>a)(?P=x)", "a backreference"),
        ("^(?>ab)", "an atomic group"),
        ("^a*+b", "a possessive quantifier"),
        ("^rancher/(.*)\\Z", "\\Z"),
        ("(?x) ^rancher/ (.*)", "a flag Go lacks"),
    ),
)
def test_a_rewrite_go_cannot_compile_is_refused(
    tmp_path: Path, pattern: str, expected: str
) -> None:
    from builder.config.registries import read

    def fail(key: str, why: str) -> UserError:
        return UserError(f"{key}: {why}")

    value = {"mirrors": {"docker.io": {"endpoint": [], "rewrite": {pattern: "x/$1"}}}}
    with pytest.raises(UserError) as info:
        read(value, "cluster.registries", lambda t: tmp_path / t, fail)
    assert "cluster.registries.mirrors.docker.io.rewrite" in str(info.value)
    assert expected in str(info.value) and "Go" in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "pattern",
    (
        "^rancher/(.*)",
        "(?i)^Library/(?P<name>.*)",
        "^(?:a|b)[]\\d(?]+\\++$",
        "[^]\\d(?=]",
        "x{2}",
    ),
)
def test_rewrites_go_compiles_are_kept(tmp_path: Path, pattern: str) -> None:
    from builder.config.registries import read

    def fail(key: str, why: str) -> UserError:
        return UserError(f"{key}: {why}")

    value = {"mirrors": {"docker.io": {"endpoint": [], "rewrite": {pattern: "x/$1"}}}}
    found = read(value, "cluster.registries", lambda t: tmp_path / t, fail)
    assert found is not None and found.mirrors[0].rewrites == ((pattern, "x/$1"),)
