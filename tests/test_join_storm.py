"""Join storm (issue 14, item 1): the test server's K3s-like admission limit, the agent's
Retry-After handling, and 100 real agents joining through the limit exactly once.
Speed figures are in bench/join_storm.py; nothing here is timed."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from builder.testserver.server import K3sTestServer, free_port
from firstboot.machine import Agent
from firstboot.paths import Root
from firstboot.report import Reporter
from firstboot.retry import THROTTLED_WINDOW, Backoff
from firstboot.server import ServerError, fetch_cacerts, pinned_context, prove_token
from firstboot.token import parse
from tests.agent_helpers import REPO, make_device
from tests.conftest import pifleet
from tests.storm_agents import JOIN_CONFIG, run_storm, storm_join_config


def _get(server: K3sTestServer, path: str, auth: str = "") -> http.client.HTTPResponse:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=30)
    conn.request("GET", path, headers={"Authorization": auth} if auth else {})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def _hold_slot(server: K3sTestServer, auth: str) -> threading.Thread:
    """One admitted readyz holding the server's only slot for its service time."""
    thread = threading.Thread(target=_get, args=(server, "/v1-k3s/readyz", auth))
    thread.start()
    while server.admission.inflight == 0:  # wait for the slot to be taken, not for a time
        time.sleep(0.01)
    return thread


def test_over_the_limit_is_429_with_retry_after_and_a_status() -> None:
    with K3sTestServer(max_inflight=1, service_time=2.0, retry_after=3) as server:
        auth = parse(server.mint_token("node")).authorization("node")
        holder = _hold_slot(server, auth)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context)
        conn.request("GET", "/v1-k3s/config", headers={"Authorization": auth})
        refused = conn.getresponse()
        body = json.loads(refused.read())
        conn.close()
        open_route = _get(server, "/cacerts")  # K3s puts no limit on /cacerts
        holder.join()
        stats = server.admission.stats()
    assert refused.status == 429
    assert refused.getheader("Retry-After") == "3"
    assert body["kind"] == "Status" and body["reason"] == "TooManyRequests"
    assert body["code"] == 429
    assert open_route.status == 200
    assert (stats.peak, stats.refused) == (1, 1)


def test_the_agent_reads_retry_after_from_a_429() -> None:
    with K3sTestServer(max_inflight=1, service_time=2.0, retry_after=7) as server:
        token = parse(server.mint_token("node"))
        holder = _hold_slot(server, token.authorization("node"))
        with pytest.raises(ServerError) as caught:
            prove_token(server.url, token, pinned_context(server.ca.cacerts))
        holder.join()
    assert caught.value.kind == "waiting"
    assert caught.value.retry_after == 7.0


def test_verify_waits_at_least_retry_after_then_joins(tmp_path: Path) -> None:
    """A throttled server: every wait of the verify state is Retry-After plus jitter."""
    with K3sTestServer(retry_after=5) as server:
        root = make_device(
            tmp_path / "d", server, server.mint_token("node"), join=storm_join_config(server.url)
        )
        agent = Agent(Root(str(root)), JOIN_CONFIG, Reporter(io.StringIO()))
        agent.prepare()
        waits: list[float] = []

        def sleep(seconds: float) -> None:
            waits.append(seconds)  # the agent's chosen wait; the test does not spend it
            time.sleep(0.2)

        agent.sleep = sleep
        server.set_phase("throttle", 0.5)
        assert agent.do_verify() == "configure"
    assert waits, "the throttled server refused nothing"
    assert all(5.0 <= w <= 5.0 + THROTTLED_WINDOW for w in waits), waits


def test_backoff_puts_retry_after_first_and_jitter_on_top() -> None:
    backoff = Backoff(60.0, lambda _s: None)
    delays = [backoff.delay(2.0) for _ in range(40)]
    assert all(2.0 <= d <= 2.0 + THROTTLED_WINDOW for d in delays)
    assert len(set(delays)) > 1  # jittered: a fleet does not come back in step
    fixed = Backoff(60.0, lambda _s: None, jitter=False)
    assert [fixed.delay(1.0) for _ in range(6)] == [2.0, 3.0, 5.0, 9.0, 16.0, 16.0]


def test_100_agents_join_exactly_once_within_the_limit(tmp_path: Path) -> None:
    agents, limit = 100, 5
    with K3sTestServer(max_inflight=limit, service_time=0.02) as server:
        token = server.mint_token("node")
        join = storm_join_config(server.url, backoff_cap=5.0)
        names = [f"edge-{i:03d}" for i in range(agents)]
        roots = [
            make_device(tmp_path / name, server, token, hostname=name, join=join) for name in names
        ]
        outcomes = run_storm(server.url, roots, period=0.5, deadline=900)
        nodes = server.registered_nodes()
        passwords = [server.node_password_hash(name) for name in names]
        stats = server.admission.stats()
    assert [o.error for o in outcomes if o.error] == []
    assert [o.code for o in outcomes] == [0] * agents
    assert sorted(nodes) == names  # one Node per agent, none twice
    assert None not in passwords
    for root in roots:
        state = json.loads((root / "var/lib/pifleet/state.json").read_text())
        assert state["state"] == "done"
        assert (root / "var/lib/pifleet/joined").exists()
        assert not (root / "etc/pifleet/token").exists()
    assert stats.peak <= limit
    assert stats.refused > 0  # the storm did meet the limit


def test_cli_flags_set_the_limit(tmp_path: Path) -> None:
    """`pifleet test-server --max-inflight 1 --service-time 5 --retry-after 4`: of two
    requests at once, one is refused with Retry-After: 4."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder", "test-server", "--port", str(port),
         "--state-dir", str(tmp_path / "s"), "--token-out", str(tmp_path / "token"),
         "--token-form", "node", "--max-inflight", "1", "--service-time", "5",
         "--retry-after", "4"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while not (tmp_path / "token").exists():  # bounded by the test run's timeout
            time.sleep(0.1)
        url = f"https://127.0.0.1:{port}"
        token = parse((tmp_path / "token").read_text().strip())
        context = pinned_context(fetch_cacerts(url))
        errors: list[ServerError] = []

        def prove() -> None:
            try:
                prove_token(url, token, context)
            except ServerError as exc:
                errors.append(exc)

        pair = [threading.Thread(target=prove) for _ in range(2)]
        for thread in pair:  # both overlap the other's 5 s slot: one of them is refused
            thread.start()
        for thread in pair:
            thread.join()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    assert [e.retry_after for e in errors] == [4.0]


def test_cli_refuses_a_negative_limit(tmp_path: Path) -> None:
    done = pifleet("test-server", "--max-inflight", "-1", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "pifleet test-server: error: argument --max-inflight: '-1' is not a whole number >= 0 "
        "(see `pifleet test-server --help`)"
    ]
