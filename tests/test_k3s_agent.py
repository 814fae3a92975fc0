"""The agent process against the strict K3s test server: waiting states, final verdicts that
recover without a reboot, K3s keeping the pin, a K3s that never joins, the agent lock."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.testserver.server import K3sTestServer
from tests.agent_helpers import (
    DEFAULT_NODE,
    agent_env,
    make_device,
    pinned_form,
    run_agent,
    stop_services,
)


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "device"
    yield root
    stop_services(root)


def start_agent(root: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "firstboot", "run", "--root", str(root)],
        env=agent_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def follow_until(proc: subprocess.Popen[str], needle: str, seen: list[str]) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if needle in line:
            return
    raise AssertionError(f"the agent ended before {needle!r}:\n" + "".join(seen))


def finish(proc: subprocess.Popen[str], seen: list[str], timeout: float = 90) -> int:
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stderr is not None
        seen.extend(proc.stderr)
        return proc.wait()
    finally:
        timer.cancel()


def test_wrong_password_is_reported_then_joins_without_a_reboot(
    tmp_path: Path, device: Path
) -> None:
    with K3sTestServer(state_dir=tmp_path / "s") as server:
        token = server.mint_token().rsplit(":", 1)[0] + ":added-on-the-server-later"
        make_device(device, server, token, recheck_interval=2.0)
        proc, seen = start_agent(device), []
        follow_until(proc, "failed state=verify reason=the server rejected the token", seen)
        follow_until(proc, "checking again in about 2 s (no reboot needed)", seen)
        status = subprocess.run(
            [sys.executable, "-m", "firstboot", "status", "--root", str(device)],
            env=agent_env(),
            capture_output=True,
            text=True,
        )
        assert "failed in: verify: the server rejected the token" in status.stdout
        server.set_password("added-on-the-server-later")
        assert finish(proc, seen) == 0, "".join(seen)
        assert server.registered_nodes() == [DEFAULT_NODE]
        assert sum("401" in line for line in seen) >= 3  # several 401s before the verdict
        assert "added-on-the-server-later" not in "".join(seen)


def test_bootstrap_token_bundle_ca_unnamed_through_503_and_403_phases(
    tmp_path: Path, device: Path
) -> None:
    phases = {"cacerts_error": 2.0, "apiserver_down": 4.0, "core_not_ready": 4.0}
    with K3sTestServer(
        state_dir=tmp_path / "s", ca_kind="bundle", named=False, phases=phases
    ) as server:
        token = server.mint_token("bootstrap")
        make_device(device, server, token)
        proc = run_agent(device)
        assert proc.returncode == 0, proc.stderr
        err = proc.stderr
        assert "/cacerts answered 503" in err
        assert "bootstrap token not accepted yet (403)" in err
        assert "failed" not in err
        assert f"server CA pinned (sha256 {server.ca_hash[:16]}" in err
        written = (device / "etc/rancher/k3s/join-token").read_text().strip()
        assert written == f"K10{server.ca_hash}::{token.rsplit('::', 1)[1]}"
        assert server.registered_nodes() == [DEFAULT_NODE]


@pytest.mark.parametrize("form", ["short", "bare-bootstrap"])
def test_unpinned_tokens_never_claim_a_pin_and_k3s_gets_the_pinned_form(
    tmp_path: Path, device: Path, form: str
) -> None:
    with K3sTestServer(state_dir=tmp_path / "s", ca_kind="bundle") as server:
        token = server.mint_token(form)
        make_device(device, server, token)
        proc = run_agent(device)
        assert proc.returncode == 0, proc.stderr
        assert "CA pinned" not in proc.stderr
        assert "warning: the token carries no CA hash" in proc.stderr
        written = (device / "etc/rancher/k3s/join-token").read_text().strip()
        assert written == pinned_form(token, server.ca_hash)
        assert written.startswith(f"K10{server.ca_hash}::")


def test_k3s_that_never_joins_is_reported_and_still_joins_when_it_recovers(
    tmp_path: Path, device: Path
) -> None:
    with K3sTestServer(state_dir=tmp_path / "s") as server:
        make_device(device, server, server.mint_token(), recheck_interval=1.0, start_timeout=3.0)
        proc, seen = start_agent(device), []
        follow_until(proc, "state=configure", seen)
        server.set_phase("core_not_ready", 3600)  # the kubelet certificates answer 503
        follow_until(proc, "failed state=start reason=K3s has not joined within 3 s", seen)
        assert "serving-kubelet.crt: 503" in seen[-1]  # the last K3s log lines
        server.set_phase("core_not_ready", 0)
        assert finish(proc, seen) == 0, "".join(seen)
        assert server.registered_nodes() == [DEFAULT_NODE]


def test_a_second_agent_does_not_race_on_the_state_file(tmp_path: Path, device: Path) -> None:
    with K3sTestServer(state_dir=tmp_path / "s") as server:
        make_device(device, server, server.mint_token())
        lock = device / "run/pifleet/agent.lock"
        lock.parent.mkdir(parents=True)
        with open(lock, "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            held.write("4242\n")
            held.flush()
            proc = run_agent(device)
        assert proc.returncode == 1
        assert "another agent (pid 4242) holds" in proc.stderr
        assert not (device / "var/lib/pifleet/state.json").exists()
        assert run_agent(device).returncode == 0  # released: the next one joins
