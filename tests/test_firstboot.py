"""The first-boot agent as a real process against the K3s test server, on a fake device root."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.testserver.server import K3sTestServer
from firstboot.state import ORDER
from tests.agent_helpers import (
    DEFAULT_NODE,
    REPO,
    agent_env,
    make_device,
    pinned_form,
    run_agent,
    run_until,
    states_seen,
    stop_services,
    texts_under,
)

ALL_STATES = list(ORDER)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[K3sTestServer]:
    with K3sTestServer(state_dir=tmp_path / "server") as srv:
        yield srv


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "device"
    yield root
    stop_services(root)


def client_registrations(server: K3sTestServer) -> int:
    return sum(
        1 for r in server.requests if r.path == "/v1-k3s/client-kubelet.crt" and r.authorized
    )


def assert_joined(
    root: Path,
    server: K3sTestServer,
    token: str,
    node: str = DEFAULT_NODE,
    label: str = "fleet=edge",
) -> None:
    """The device joined as `node`: the server's record, the agent's state, K3s's config, the
    pinned token and the agent unit as K3s's install.sh writes them, the builder's copies gone."""
    nodes = server.registered_nodes()
    assert nodes == [node], f"the server has nodes {nodes}, not exactly {node}"
    assert (root / "var/lib/pifleet/joined").exists(), "no joined marker"
    state = json.loads((root / "var/lib/pifleet/state.json").read_text())
    assert state["state"] == "done", f"the agent's state is {state['state']}, not done"
    assert state["node_name"] == node, f"the agent's node is {state['node_name']}, not {node}"
    config_file = root / "etc/rancher/k3s/config.yaml"
    config = config_file.read_text()
    assert f'node-name: "{node}"' in config, f"config.yaml does not name the node {node}"
    assert f'server: "{server.url}"' in config, f"config.yaml does not name {server.url}"
    assert f'"{label}"' in config, f"config.yaml has no label {label}"
    assert '"max-pods=60"' in config, "config.yaml has no kubelet arg max-pods=60"
    assert config_file.stat().st_mode & 0o777 == 0o600, "config.yaml is not 0600"
    join_token = root / "etc/rancher/k3s/join-token"
    pinned = pinned_form(token, server.ca_hash)
    assert join_token.read_text().strip() == pinned, "join-token is not the CA-pinned token"
    assert join_token.stat().st_mode & 0o777 == 0o600, "join-token is not 0600"
    unit = (root / "etc/systemd/system/k3s-agent.service").read_text()
    for line in (
        "Type=notify",
        "KillMode=process",
        "Delegate=yes",
        "Restart=always",
        "TimeoutStartSec=0",
        "ExecStartPre=-/sbin/modprobe br_netfilter",
        "ExecStartPre=-/sbin/modprobe overlay",
        "EnvironmentFile=-/etc/systemd/system/k3s-agent.service.env",
    ):
        assert line in unit.splitlines(), f"k3s-agent.service has no line {line}"
    env = root / "etc/systemd/system/k3s-agent.service.env"
    assert env.stat().st_mode & 0o777 == 0o600, "k3s-agent.service.env is not 0600"
    assert not (root / "etc/pifleet/token").exists(), "the builder's copy of the token is removed"
    assert not (root / "boot/firmware/pifleet/token").exists(), "the boot token is left"
    assert not (
        root / "etc/systemd/system/multi-user.target.wants/pifleet-firstboot.service"
    ).is_symlink(), "the agent is still enabled after the join"


def assert_token_only_in_its_files(root: Path, outputs: str, token: str) -> None:
    password = token.rsplit(":", 1)[-1]
    assert token not in outputs, "the token is in the agent's output"
    assert password not in outputs, "the token's password is in the agent's output"
    allowed = {
        root / "etc/rancher/k3s/join-token",
        root / "etc/pifleet/token",
        root / "boot/firmware/pifleet/token",
    }
    for path, data in texts_under(root).items():
        if path not in allowed:
            assert password.encode() not in data, f"token found in {path}"


def test_joins_from_load_to_cleanup(server: K3sTestServer, device: Path) -> None:
    token = server.mint_token()
    make_device(device, server, token)
    proc = run_agent(device)
    assert proc.returncode == 0, proc.stderr
    assert states_seen(proc.stderr) == ALL_STATES
    assert proc.stderr.strip().splitlines()[-1] == f"pifleet-firstboot: joined node={DEFAULT_NODE}"
    assert_joined(device, server, token)
    assert (device / "etc/hostname").read_text() == DEFAULT_NODE + "\n", (
        "a golden image names itself"
    )
    assert (device / "etc/rancher/node/password").exists(), "K3s (stand-in) made its node password"
    log = (device / "run/standin-systemd/k3s-agent.service.log").read_text()
    assert_token_only_in_its_files(device, proc.stdout + proc.stderr + log, token)
    again = run_agent(device)
    assert again.returncode == 0 and "already joined" in again.stderr
    assert client_registrations(server) == 1


def test_device_file_boot_token_and_preseeded_password(server: K3sTestServer, device: Path) -> None:
    token = server.mint_token()
    make_device(
        device,
        server,
        token,
        hostname="pi-042",
        labels=("zone=north", "fleet=special"),
        boot_token=True,
        node_password="0123456789abcdef0123456789abcdef",
    )
    proc = run_agent(device)
    assert proc.returncode == 0, proc.stderr
    assert_joined(device, server, token, node="pi-042", label="fleet=special")
    config = (device / "etc/rancher/k3s/config.yaml").read_text()
    assert '"zone=north"' in config and '"fleet=special"' in config and '"fleet=edge"' not in config
    assert (
        device / "etc/rancher/node/password"
    ).read_text().strip() == "0123456789abcdef0123456789abcdef"
    assert server.node_password_hash("pi-042") is not None
    assert not (device / "boot/firmware/pifleet/node-password").exists()
    assert not (device / "etc/hostname").exists(), (
        "cloud-init names a configured device, not the agent"
    )


def test_server_down_then_up(server: K3sTestServer, device: Path) -> None:
    make_device(device, server, server.mint_token())
    server.set_down(True)
    timer = threading.Timer(3.0, server.set_down, args=(False,))
    timer.start()
    started = time.monotonic()
    proc = run_agent(device)
    timer.join()
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started >= 3.0
    assert "waiting for the server: cannot reach" in proc.stderr
    assert server.registered_nodes() == [DEFAULT_NODE]


def test_wrong_ca_refuses_and_never_sends_the_password(server: K3sTestServer, device: Path) -> None:
    token = server.mint_token()
    forged = "K10" + "0" * 64 + token[67:]
    make_device(device, server, forged)
    proc = run_agent(device)
    assert proc.returncode == 2
    assert (
        "pifleet-firstboot: failed state=verify reason=token CA hash does not match" in proc.stderr
    )
    assert server.requests and not any(r.had_credentials for r in server.requests)
    state = json.loads((device / "var/lib/pifleet/state.json").read_text())
    assert state["failed_state"] == "verify" and "man-in-the-middle" in state["failed_reason"]


def test_wrong_token_is_terminal(server: K3sTestServer, device: Path) -> None:
    token = server.mint_token()
    make_device(device, server, token.rsplit(":", 1)[0] + ":not-the-password")
    proc = run_agent(device)
    assert proc.returncode == 2
    assert (
        "failed state=verify reason=the server rejected the token (401 Unauthorized)" in proc.stderr
    )
    assert server.registered_nodes() == []


def test_node_password_conflict(server: K3sTestServer, device: Path) -> None:
    server.preregister("pi-042", "the-old-password-of-a-lost-card")
    make_device(device, server, server.mint_token(), hostname="pi-042")
    proc = run_agent(device)
    assert proc.returncode == 2, proc.stderr
    assert "failed state=start reason=Node password rejected" in proc.stderr
    assert "kubectl delete node pi-042" in proc.stderr


def test_clock_at_1970_is_corrected_from_the_pinned_server(
    server: K3sTestServer, device: Path
) -> None:
    make_device(device, server, server.mint_token(), clock_sync_timeout=1.0)
    (device / "run/systemd/timesync/synchronized").unlink()
    offset = device / "run/pifleet/clock-offset"
    offset.parent.mkdir(parents=True)
    offset.write_text(str(86400 - time.time()))  # the device thinks it is 2 January 1970
    proc = run_agent(device)
    assert proc.returncode == 0, proc.stderr
    assert "clock set from the pinned server's Date header" in proc.stderr
    assert abs(float(offset.read_text())) < 60


CUTS = [
    (state, point)
    for state in ALL_STATES
    for point in ("after", "before")
    if (state, point) != ("load", "before")
]


@pytest.mark.parametrize(("state", "point"), CUTS, ids=[f"{p}-{s}" for s, p in CUTS])
def test_power_cut_in_every_state(
    server: K3sTestServer, device: Path, state: str, point: str
) -> None:
    token = server.mint_token()
    make_device(device, server, token)
    cut = run_agent(device, {"PIFLEET_FAULT": f"kill-{point}:{state}"})
    assert cut.returncode == -9, cut.stderr
    resumed = run_agent(device)
    assert resumed.returncode == 0, resumed.stderr
    # killed after entering `state`: it runs again; killed before entering it: the state
    # before it (whose work was done but not recorded) runs again, harmlessly.
    expected = state if point == "after" else ALL_STATES[ALL_STATES.index(state) - 1]
    assert states_seen(resumed.stderr)[0] == expected
    assert_joined(device, server, token)
    assert client_registrations(server) == 1, "joins exactly once"


def test_unwritable_state_dir(server: K3sTestServer, device: Path) -> None:
    make_device(device, server, server.mint_token())
    (device / "var/lib").mkdir(parents=True)
    (device / "var/lib/pifleet").write_text("not a directory")
    proc = run_agent(device)
    assert proc.returncode == 2
    assert "pifleet-firstboot: failed state=load reason=cannot write" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("breaks", "expected"),
    [
        (  # cgroup v2 (every current Pi OS): the unified hierarchy's controllers decide
            lambda root: (root / "sys/fs/cgroup/cgroup.controllers").write_text("cpu io pids\n"),
            "not in /sys/fs/cgroup/cgroup.controllers: K3s cannot run; add cgroup_enable=memory"
            " to cmdline.txt",
        ),
        (  # /proc/cgroups says enabled, the unified hierarchy has no memory controller
            lambda root: (root / "sys/fs/cgroup/cgroup.controllers").write_text("cpuset cpu\n"),
            "kernels 6.12+ ignore cgroup_memory=1",
        ),
        (  # cgroup v1 only: /proc/cgroups
            lambda root: (
                (root / "sys/fs/cgroup/cgroup.controllers").unlink(),
                (root / "proc/cgroups").write_text("memory\t0\t1\t0\n"),
            ),
            "the memory cgroup is disabled (/proc/cgroups)",
        ),
        (
            lambda root: (root / "usr/local/bin/k3s").unlink(),
            "the K3s binary /usr/local/bin/k3s is missing",
        ),
        (lambda root: (root / "etc/pifleet/join.json").write_text("{"), "not valid JSON"),
    ],
)
def test_preflight_failures_are_terminal(
    server: K3sTestServer, device: Path, breaks, expected: str
) -> None:  # type: ignore[no-untyped-def]
    make_device(device, server, server.mint_token())
    breaks(device)
    if expected == "not valid JSON":  # no join config, so the default 600 s re-check
        err = run_until(device, "checking again in about 600 s")
        assert expected in err and "failed state=load" in err
        return
    proc = run_agent(device)
    assert proc.returncode == 2
    assert expected in proc.stderr and "failed state=load" in proc.stderr


def test_short_token_warns_that_nothing_is_pinned(server: K3sTestServer, device: Path) -> None:
    make_device(device, server, server.mint_token(short=True))
    proc = run_agent(device)
    assert proc.returncode == 0, proc.stderr
    assert "pifleet-firstboot: warning: the token carries no CA hash" in proc.stderr


def test_status_shows_state_without_secrets(server: K3sTestServer, device: Path) -> None:
    token = server.mint_token()
    make_device(device, server, token)
    run_agent(device)
    status = subprocess.run(
        [sys.executable, "-m", "firstboot", "status", "--root", str(device)],
        env=agent_env(),
        capture_output=True,
        text=True,
    )
    assert status.returncode == 0
    assert "state:     done" in status.stdout and DEFAULT_NODE in status.stdout
    assert token.rsplit(":", 1)[-1] not in status.stdout


def check_server(url: str, token_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "firstboot",
            "check-server",
            "--server",
            url,
            "--token-file",
            str(token_file),
            "--timeout",
            "3",
        ],
        env=agent_env(),
        capture_output=True,
        text=True,
    )


def test_check_server_one_line_per_outcome(server: K3sTestServer, tmp_path: Path) -> None:
    token = server.mint_token()
    good, wrong_ca, wrong_pw = tmp_path / "good", tmp_path / "ca", tmp_path / "pw"
    good.write_text(token)
    wrong_ca.write_text("K10" + "1" * 64 + token[67:])
    wrong_pw.write_text(token.rsplit(":", 1)[0] + ":nope")
    cases = [
        (server.url, good, 0, "ok: "),
        (server.url, wrong_ca, 1, "error: CA hash mismatch"),
        (server.url, wrong_pw, 1, "error: token rejected"),
        ("https://127.0.0.1:1", good, 1, "error: unreachable"),
    ]
    for url, token_file, code, prefix in cases:
        proc = check_server(url, token_file)
        assert proc.returncode == code, proc.stdout
        assert proc.stdout.startswith(prefix) and proc.stdout.count("\n") == 1
        assert token.rsplit(":", 1)[-1] not in proc.stdout + proc.stderr


def test_check_server_spots_a_server_that_is_not_k3s(tmp_path: Path) -> None:
    import http.server
    import ssl

    with K3sTestServer(state_dir=tmp_path / "ca") as k3s:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(k3s.state_dir / "serving.crt", k3s.state_dir / "serving.key")
        token = k3s.mint_token()
    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        (tmp_path / "t").write_text(token)
        proc = check_server(f"https://127.0.0.1:{httpd.server_address[1]}", tmp_path / "t")
        assert proc.returncode == 1 and proc.stdout.startswith("error: not a K3s server")
    finally:
        httpd.shutdown()


def find_python(version: str) -> str | None:
    """pythonX.Y on PATH or in a pyenv installation (whose shims need a selected version)."""
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(
        str(p) for p in Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}")
    )
    for python in filter(None, candidates):
        if subprocess.run([python, "-c", "import ssl"], capture_output=True).returncode == 0:
            return python
    return None


@pytest.mark.parametrize("version", ["3.9", "3.10", "3.11", "3.12", "3.13"])
def test_runs_on_every_device_python(server: K3sTestServer, device: Path, version: str) -> None:
    python = find_python(version)
    if python is None:
        pytest.skip(f"python{version} is not installed here")
    make_device(device, server, server.mint_token())
    proc = run_agent(device, python=python)
    assert proc.returncode == 0, proc.stderr
    assert server.registered_nodes() == [DEFAULT_NODE]


def test_agent_source_is_python39_syntax_and_stdlib_only() -> None:
    allowed = set(sys.stdlib_module_names) | {"firstboot", "systemd"}
    files = [*sorted((REPO / "firstboot").rglob("*.py")), REPO / "tests/fixtures/k3s-standin"]
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path), feature_version=(3, 9))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] in allowed, f"{path}: imports {name}"


def test_agent_logs_the_page_size(server: K3sTestServer, device: Path) -> None:
    make_device(device, server, server.mint_token())
    proc = run_agent(device)
    assert proc.returncode == 0, proc.stderr
    size = os.sysconf("SC_PAGE_SIZE") // 1024
    assert f"pifleet-firstboot: load: page size {size}K" in proc.stderr
