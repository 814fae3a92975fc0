"""The whole input surface of `status`, `diagnose`, `test-server`, `boot-test` and `token pin`:
every option has bad values here, each refused in one line with exit 2, never an internal error
(issue 21, item 8). `test_every_option_has_a_bad_value_case` walks each command's argparse options, so a
new option without a case here fails the suite."""

from __future__ import annotations

import argparse
import http.server
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_TOKEN, fleet_yaml, pifleet
from tests.image_edit import put_raw
from tests.layouts import LAYOUTS, make_pi_image

# command -> option (its longest flag, or a positional's name) -> [(arguments, what the line says)]
# In arguments, {d} is the command's prepared folder and {busy} a port something listens on.
Cases = dict[str, list[tuple[list[str], str]]]
KUBE = "--kubeconfig"
STATUS: Cases = {
    "config": [(["{d}/nope.yaml"], "fleet config not found")],
    KUBE: [
        ([KUBE, "{d}/nope"], "kubeconfig not found"),
        ([KUBE, "{d}"], "is a directory"),
        ([KUBE, "{d}/garbage"], "not a kubeconfig: YAML error"),
        ([KUBE, "{d}/list"], "not a kubeconfig: a list, not a mapping"),
        ([KUBE, "{d}/empty"], "not a kubeconfig: empty"),
        ([KUBE, "{d}/latin1"], "not UTF-8"),
        ([KUBE, "{d}/binary"], "NUL byte"),
        ([KUBE, "{d}/bomb"], "more than 100000 values once aliases are expanded"),
        ([KUBE, "{d}/bad-ca-base64"], "clusters[0].cluster.certificate-authority-data is not"),
        ([KUBE, "{d}/bad-key-base64"], "users[0].user.client-key-data is not valid base64"),
        ([KUBE, "{d}/clusters-string"], "clusters is a string, not a list"),
        ([KUBE, "{d}/nameless"], "contexts[0].name is missing"),
        ([KUBE, "{d}/no-context"], "not a usable kubeconfig"),
        ([KUBE, "{d}/answers-empty-object"], "is not a Kubernetes API server"),
        ([KUBE, "{d}/answers-html"], "is not a Kubernetes API server"),
    ],
    "--interval": [(["--interval", v], "--interval") for v in ("-5", "nan", "0", "inf", "x")],
    "--timeout": [(["--timeout", v], "--timeout") for v in ("-1", "nan", "0", "x")],
    "--watch": [(["--watch=1"], "--watch")],
    "--json": [(["--json=yes"], "--json")],
}
DIAGNOSE: Cases = {
    "target": [
        (["{d}/nope.img"], "no such file or device"),
        (["{d}/junk.img"], "not"),
        (["{d}/bad-report.img"], "report.json is damaged: timeline is a string"),
        (["{d}/deep-report.img"], "nested more than 16 levels deep"),
    ],
    "--journal": [(["{d}/card.img", "--journal=1"], "--journal")],
    "--json": [(["{d}/card.img", "--json=1"], "--json")],
}
SECONDS = ("-1", "nan", "inf", "soon")
TEST_SERVER: Cases = {
    "--port": [(["--port", v], "--port") for v in ("70000", "-1", "http")]
    + [(["--port", "{busy}"], "the port is in use")],
    "--host": [
        (["--host", "bad host"], "--host"),
        (["--host", "a\nb"], "--host"),
        (["--host", "192.0.2.1"], "cannot listen on 192.0.2.1"),  # not this machine's
    ],
    "--state-dir": [
        (["--state-dir", "{d}/a-file"], "not a folder"),
        (["--state-dir", "{d}/bad-key"], "cannot load it"),
        (["--state-dir", "{d}/bad-registry"], "cannot load it"),
    ],
    "--token-out": [
        (["--token-out", "{d}"], "a folder; give the file"),
        (["--token-out", "{d}/nope/token"], "does not exist"),
    ],
    "--token-form": [(["--token-form", "password"], "--token-form")],
    "--san": [(["--san", v], "--san") for v in ("a b", "a\nb", "", "x" * 300, "a/b")]
    + [(["--san=-x"], "--san")],
    "--ca": [(["--ca", "triple"], "--ca")],
    "--unnamed": [(["--unnamed=1"], "--unnamed")],
    "--cacerts-error-code": [
        (["--cacerts-error-code", v], "--cacerts-error-code") for v in ("999", "200", "5xx")
    ],
    "--max-inflight": [(["--max-inflight", v], "--max-inflight") for v in ("-1", "1.5")],
    "--service-time": [(["--service-time", v], "--service-time") for v in SECONDS],
    "--retry-after": [(["--retry-after", v], "--retry-after") for v in ("-1", "x")],
    **{
        flag: [([flag, v], flag) for v in SECONDS]
        for flag in (
            "--cacerts-error-for",
            "--apiserver-down-for",
            "--not-ready-for",
            "--throttle-for",
        )
    },
}
BOOT_TEST: Cases = {
    "image": [(["{d}/nope.img"], "no such file"), (["{d}"], "not a regular file")],
    "--timeout": [(["{d}/card.img", "--timeout", v], "--timeout") for v in ("nan", "-1", "0")],
    "--kernel": [
        (["{d}/card.img", "--kernel", "{d}/missing-kernel", "--keep", "{d}/kept"], "no such file"),
        (["{d}/card.img", "--kernel", "{d}"], "--kernel"),
    ],
    "--machine": [
        (["{d}/card.img", "--machine", "raspi4b"], "invalid choice"),
        (
            ["{d}/card.img", "--machine", "raspi3b", "--kernel", "{d}/vmlinuz"],
            "--kernel is for -M virt",
        ),
        (["{d}/card.img", "--machine", "raspi2b"], "--machine raspi2b boots armhf images"),
    ],
    "--initrd": [
        (["{d}/card.img", "--kernel", "{d}/vmlinuz", "--initrd", "{d}/nope"], "no such file"),
        (["{d}/card.img", "--initrd", "{d}/vmlinuz"], "--initrd needs --kernel"),
    ],
    "--server": [
        (["{d}/card.img", "--server", "http://k3s:6443", "--token-file", "{d}/token"], "https"),
        (["{d}/card.img", "--server", "https://k3s:6443"], "--server needs --token-file"),
    ],
    "--token-file": [
        (["{d}/card.img", "--server", "https://k3s:6443", "--token-file", "{d}/nope"], "nope"),
        (["{d}/card.img", "--server", "https://k3s:6443", "--token-file", "{d}/open-token"], "o"),
    ],
    "--junit": [
        (["{d}/card.img", "--junit", "{d}"], "a folder; give the file"),
        (["{d}/card.img", "--junit", "{d}/nope/junit.xml"], "does not exist"),
    ],
    "--keep": [(["{d}/card.img", "--keep", "{d}/a-file"], "not a folder")],
}
KUBEADM = ["--kind", "kubeadm"]
TOKEN_PIN: Cases = {  # every case is refused before anything is fetched (nothing listens at :9)
    "server": [
        (["http://127.0.0.1:9", "--kind", "kubeadm"], "https"),
        (["127.0.0.1:6443", "--kind", "kubeadm"], "must be https://host[:port]"),
    ],
    "--kind": [
        (["https://127.0.0.1:9", "--kind", "k8s"], "invalid choice: 'k8s'"),
        (["https://127.0.0.1:9", "--kind", "k3s", "-o", "{d}/out"], "--token-file: required"),
    ],
    "--token-file": [
        (["https://127.0.0.1:9", *KUBEADM, "--token-file", "{d}/token"], "not with --kind kubeadm"),
        (["https://127.0.0.1:9", "--token-file", "{d}/nope", "-o", "{d}/out"], "nope"),
        (["https://127.0.0.1:9", "--token-file", "{d}/open-token", "-o", "{d}/out"], "open-token"),
    ],
    "--output": [
        (["https://127.0.0.1:9", *KUBEADM, "-o", "{d}"], "is a directory"),
        (["https://127.0.0.1:9", *KUBEADM, "-o", "{d}/nope/pin.yaml"], "does not exist"),
        (["https://127.0.0.1:9", "--token-file", "{d}/token"], "-o/--output: required"),
    ],
    "--yes": [(["https://127.0.0.1:9", *KUBEADM, "--yes=1"], "--yes")],
    "--role": [
        (["https://127.0.0.1:9", *KUBEADM, "--role", "worker"], "invalid choice"),
        (["https://127.0.0.1:9", *KUBEADM, "--role", "server"], "--role server: not with"),
    ],
    "--timeout": [
        (["https://127.0.0.1:9", *KUBEADM, "--timeout", v], "--timeout") for v in SECONDS
    ],
}
COMMANDS = {
    "status": STATUS,
    "diagnose": DIAGNOSE,
    "test-server": TEST_SERVER,
    "boot-test": BOOT_TEST,
    "token pin": TOKEN_PIN,
}


def options_of(command: str) -> set[str]:
    """Every option of `command` as its parser has it: the longest flag, or a positional's name."""
    from builder.cli import _parser

    parser = _parser()
    for word in command.split():  # "token pin": the subcommand's own parser
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    found = set()
    for action in parser._actions:
        if not isinstance(action, argparse._HelpAction):
            found.add(max(action.option_strings, key=len) if action.option_strings else action.dest)
    return found


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_option_has_a_bad_value_case(command: str) -> None:
    cases = COMMANDS[command]
    assert options_of(command) == set(cases), "add bad-value cases for the new option here"
    assert all(cases.values())


class _Fixed(http.server.BaseHTTPRequestHandler):
    """Answers every GET with `body` (200, JSON or not): not a Kubernetes API server."""

    body = b"{}"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def answering() -> Iterator[dict[str, str]]:
    """Two servers on 127.0.0.1: one answers {} to everything, one an HTML page."""
    servers, urls = [], {}
    for name, body in (("empty-object", b"{}"), ("html", b"<html>hello</html>")):
        handler = type("Handler", (_Fixed,), {"body": body})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        urls[name] = f"http://127.0.0.1:{server.server_address[1]}"
    yield urls
    for server in servers:
        server.shutdown()
        server.server_close()


def kubeconfig(server: str, cluster: str = "", user: str = "token: not-a-secret") -> str:
    return (
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters:\n- name: c\n  cluster: {{server: '{server}'{cluster}}}\n"
        f"users:\n- name: u\n  user: {{{user}}}\n"
        "contexts:\n- name: c\n  context: {cluster: c, user: u}\n"
    )


def bomb() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        lines.append(f"{level}: &{level} [{', '.join([f'*{previous}'] * 9)}]")
    return "\n".join(lines) + "\n"


def status_dir(root: Path, answering: dict[str, str]) -> Path:
    d = root / "status"
    d.mkdir()
    (d / "fleet.yaml").write_text(fleet_yaml(devices="devices:\n  - hostname: edge-001\n"))
    good = kubeconfig("https://127.0.0.1:9")  # nothing listens on port 9
    files = {
        "kubeconfig": good, "garbage": "clusters: [\n  - {name: ", "list": "- a\n- b\n",
        "empty": "", "bomb": bomb(),
        "bad-ca-base64": kubeconfig("https://127.0.0.1:9", ", certificate-authority-data: '!!notb64'"),
        "bad-key-base64": kubeconfig("https://127.0.0.1:9", user="client-key-data: 'x y z ==='"),
        "clusters-string": "clusters: everything\ncontexts: []\n",
        "nameless": "contexts:\n- context: {cluster: c}\n",
        "no-context": good.replace("current-context: c\n", ""),
        **{f"answers-{name}": kubeconfig(url) for name, url in answering.items()},
    }  # fmt: skip
    for name, text in files.items():
        (d / name).write_text(text)
    (d / "latin1").write_bytes(good.encode() + "# caf\xe9\n".encode("latin-1"))
    (d / "binary").write_bytes(b"apiVersion: v1\n\0\0\0")
    return d


def diagnose_dir(root: Path) -> Path:
    d = root / "diagnose"
    d.mkdir()
    for name, report in (
        ("card.img", b'{"node": "edge-042", "state": "verify"}'),
        ("bad-report.img", b'{"timeline": "verify"}'),
        ("deep-report.img", b'{"extra": ' + b"[" * 40 + b"]" * 40 + b"}"),
    ):
        put_raw(make_pi_image(d / name, LAYOUTS["trixie"], "arm64"), report)
    (d / "junk.img").write_bytes(os.urandom(8192))
    return d


def server_state_dirs(root: Path) -> Path:
    from builder.testserver.server import K3sTestServer

    d = root / "test-server"
    d.mkdir()
    (d / "a-file").write_text("")
    for name in ("bad-key", "bad-registry"):
        with K3sTestServer(state_dir=d / name) as server:
            server.mint_token()
    (d / "bad-key" / "server-ca.key").write_text("not a key\n")
    (d / "bad-registry" / "registry.json").write_text("{not json")
    return d


def boot_test_dir(root: Path) -> Path:
    d = root / "boot-test"
    d.mkdir()
    make_pi_image(d / "card.img", LAYOUTS["trixie"], "arm64")
    (d / "vmlinuz").write_bytes(b"not really a kernel")
    (d / "a-file").write_text("")
    for name, mode in (("token", 0o600), ("open-token", 0o644)):
        (d / name).write_text(TEST_TOKEN + "\n")
        (d / name).chmod(mode)
    return d


def token_pin_dir(root: Path) -> Path:
    d = root / "token-pin"
    d.mkdir()
    for name, mode in (("token", 0o600), ("open-token", 0o644)):
        (d / name).write_text(TEST_TOKEN + "\n")
        (d / name).chmod(mode)
    return d


@pytest.fixture(scope="module")
def prepared(
    tmp_path_factory: pytest.TempPathFactory, answering: dict[str, str]
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-input")
    return {
        "status": status_dir(root, answering),
        "diagnose": diagnose_dir(root),
        "test-server": server_state_dirs(root),
        "boot-test": boot_test_dir(root),
        "token pin": token_pin_dir(root),
    }


def base_arguments(command: str, d: Path, option: str) -> list[str]:
    """What a command needs besides the option under test (all of it valid)."""
    if command == "status":
        fleet = [] if option == "config" else [f"{d}/fleet.yaml"]
        return fleet if option in ("config", KUBE) else [*fleet, KUBE, f"{d}/kubeconfig"]
    if command == "test-server":
        state = [] if option == "--state-dir" else ["--state-dir", f"{d}/state"]
        return (["--port", "0"] if option != "--port" else []) + state
    return []


def every_case() -> Iterator[Any]:
    for command, cases in COMMANDS.items():
        for option, bad in cases.items():
            for i, (arguments, needle) in enumerate(bad):
                yield pytest.param(command, option, arguments, needle, id=f"{command} {option} {i}")


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(("command", "option", "arguments", "needle"), list(every_case()))
def test_bad_value_is_one_line_exit_2(
    command: str,
    option: str,
    arguments: list[str],
    needle: str,
    prepared: dict[str, Path],
    busy_port: int,
) -> None:
    d = prepared[command]
    filled = [a.replace("{d}", str(d)).replace("{busy}", str(busy_port)) for a in arguments]
    filled = [*base_arguments(command, d, option), *filled]
    done = pifleet(*command.split(), *filled, cwd=d, timeout=60)
    assert done.returncode == 2, (filled, done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1, done.stderr
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr
    assert needle in done.stderr, done.stderr
    assert TEST_TOKEN not in done.stdout + done.stderr
    if option == "--kernel":  # refused before the overlay (or --keep's folder) is made
        assert not (d / "kept").exists()
