"""Conformance matrix: every token form x CA kind x server name x server phase, the agent's
own checks (firstboot.server) against the strict K3s test server; plus the K3s stand-in
(an emulation written to K3s's rules, not to the agent's) on the same servers."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.testserver.server import K3sTestServer
from firstboot.server import ServerError, check_pin, fetch_cacerts, prove_token
from firstboot.token import parse
from tests.agent_helpers import FIXTURES

FORMS = ("server", "node", "bootstrap", "bare-bootstrap", "short")
CAS = ("single", "bundle")
NAMES = ("named", "unnamed")
PHASES = ("ready", "503", "403-before-apiserver")
PHASE_SECONDS = 0.8


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[tuple[str, str], K3sTestServer]]:
    running: dict[tuple[str, str], K3sTestServer] = {}
    for ca, name in itertools.product(CAS, NAMES):
        state = tmp_path_factory.mktemp(f"{ca}-{name}")
        server = K3sTestServer(state_dir=state, ca_kind=ca, named=name == "named")
        running[(ca, name)] = server.__enter__()
    yield running
    for server in running.values():
        server.__exit__(None, None, None)


def fresh(server: K3sTestServer) -> K3sTestServer:
    """The module's shared server with any phase an earlier test set on it ended (tests may
    run in any order, and on two workers)."""
    for phase in ("cacerts_error", "core_not_ready", "apiserver_down"):
        server.set_phase(phase, 0)
    return server


# A wait that only says this host was too busy to answer within the request's deadline (the
# suite runs beside QEMU guests): not something the server said, so not a kind it met.
BUSY_HOST = ("no complete answer within", "timed out")


def join_check(server: K3sTestServer, token_text: str, deadline: float) -> tuple[bool, list[str]]:
    """The agent's verify step, retried while the server says wait: (proved, kinds met)."""
    token = parse(token_text)
    seen: list[str] = []
    while True:
        try:
            pin = check_pin(fetch_cacerts(server.url, 3), token)
            prove_token(server.url, token, pin.context(), 3)
            return True, seen
        except ServerError as exc:
            if not (exc.kind == "waiting" and any(b in str(exc) for b in BUSY_HOST)):
                seen.append(exc.kind)
            if exc.kind != "waiting" or time.monotonic() > deadline:
                return False, seen
            time.sleep(0.1)


CASES = list(itertools.product(FORMS, CAS, NAMES, PHASES))


@pytest.mark.parametrize(("form", "ca", "name", "phase"), CASES, ids=["-".join(c) for c in CASES])
def test_joins_every_server_a_k3s_cluster_can_be(
    servers: dict[tuple[str, str], K3sTestServer], form: str, ca: str, name: str, phase: str
) -> None:
    server = fresh(servers[(ca, name)])
    token = server.mint_token(form)
    if phase == "503":
        server.set_phase("cacerts_error", PHASE_SECONDS)
        server.set_phase("core_not_ready", PHASE_SECONDS * 2)
    elif phase == "403-before-apiserver":
        server.set_phase("apiserver_down", PHASE_SECONDS)
    joined, seen = join_check(server, token, time.monotonic() + 20)
    assert joined and set(seen) <= {"waiting"}, seen  # joined, after waiting states only
    if phase == "ready":
        assert seen == []
    if phase == "503":
        assert "waiting" in seen
    if phase == "403-before-apiserver":
        assert bool(seen) == ("bootstrap" in form)  # Basic auth needs no apiserver


@pytest.mark.parametrize(("ca", "name"), list(itertools.product(CAS, NAMES)))
def test_final_verdicts(servers: dict[tuple[str, str], K3sTestServer], ca: str, name: str) -> None:
    server = fresh(servers[(ca, name)])
    good = server.mint_token()
    other = "cd" * 32
    cases = [
        (good.replace(server.ca_hash, other), "ca_mismatch"),
        (good.rsplit(":", 1)[0] + ":wrong", "token_rejected"),
        ("wrong-short-token", "token_rejected"),
        (f"K10{server.ca_hash}::abcdef.0123456789abcdef", "token_rejected"),
        (server.create_bootstrap_token(ttl=0.001), "token_rejected"),  # expired
    ]
    time.sleep(0.01)
    for token, kind in cases:
        assert join_check(server, token, time.monotonic() + 5) == (False, [kind])


@pytest.mark.parametrize(("form", "ca"), list(itertools.product(FORMS, CAS)))
def test_the_k3s_standin_agrees(
    servers: dict[tuple[str, str], K3sTestServer], tmp_path: Path, form: str, ca: str
) -> None:
    server = servers[(ca, "unnamed")]
    root = tmp_path / "root"
    (root / "etc/rancher/k3s").mkdir(parents=True)
    (root / "etc/rancher/k3s/token").write_text(server.mint_token(form) + "\n")
    node = f"standin-{form}-{ca}"
    (root / "etc/rancher/k3s/config.yaml").write_text(
        f'server: "{server.url}"\ntoken-file: "/etc/rancher/k3s/token"\nnode-name: "{node}"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, str(FIXTURES / "k3s-standin"), "agent"],
        env={**os.environ, "K3S_STANDIN_ROOT": str(root), "K3S_STANDIN_PERIOD": "0.3"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while node not in server.registered_nodes() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert node in server.registered_nodes(), err


def test_the_standin_refuses_a_wrong_hash_for_a_bundle(
    servers: dict[tuple[str, str], K3sTestServer], tmp_path: Path
) -> None:
    server = servers[("bundle", "unnamed")]
    body_hash = __import__("hashlib").sha256(server.ca.cacerts).hexdigest()
    root = tmp_path / "root"
    (root / "etc/rancher/k3s").mkdir(parents=True)
    token = server.mint_token().replace(server.ca_hash, body_hash)  # hashing the body is wrong here
    (root / "etc/rancher/k3s/token").write_text(token)
    (root / "etc/rancher/k3s/config.yaml").write_text(
        f'server: "{server.url}"\ntoken-file: "/etc/rancher/k3s/token"\nnode-name: "x"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, str(FIXTURES / "k3s-standin"), "agent"],
        env={**os.environ, "K3S_STANDIN_ROOT": str(root), "K3S_STANDIN_PERIOD": "0.3"},
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)
    proc.kill()
    _, err = proc.communicate()
    assert "token CA hash does not match the Cluster CA certificate hash" in err
    assert "x" not in server.registered_nodes()


@pytest.mark.parametrize(("ca", "name"), list(itertools.product(CAS, NAMES)))
def test_role_server_proves_the_server_token_on_a_server_route(
    servers: dict[tuple[str, str], K3sTestServer], ca: str, name: str
) -> None:
    server = servers[(ca, name)]

    def prove(token_text: str) -> str:
        token = parse(token_text)
        pin = check_pin(fetch_cacerts(server.url, 3), token)
        try:
            prove_token(server.url, token, pin.context(), 3, role="server")
        except ServerError as exc:
            return exc.kind
        return "ok"

    assert prove(server.mint_token("server")) == "ok"
    assert prove(server.mint_token("short")) == "ok"  # a short token is the server password
    assert prove(server.mint_token("server").rsplit(":", 1)[0] + ":wrong") == "token_rejected"
    assert [r.path for r in server.requests][-1] == "/v1-k3s/encrypt/status"
