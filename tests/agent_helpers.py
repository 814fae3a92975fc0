"""A fake device for the first-boot agent: a directory laid out like a Pi's root, with the
kernel interfaces the agent reads (/proc, /sys) as files, the K3s stand-in as K3s, and the
systemctl stand-in as service manager. The agent runs as a real process with --root."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

from builder.testserver.server import K3sTestServer
from firstboot import joinconfig

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
SERIAL = "10000000abcdef01"
DEFAULT_NODE = f"edge-{SERIAL}"
ROUTE_HEADER = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
)
DEFAULT_ROUTE = "eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"


def make_device(
    root: Path,
    server: K3sTestServer,
    token: str,
    *,
    hostname: str | None = None,
    labels: tuple[str, ...] = (),
    boot_token: bool = False,
    node_password: str | None = None,
    build_time: int = 1_700_000_000,
    clock_sync_timeout: float = 1.0,
    join: joinconfig.JoinConfig | None = None,
    recheck_interval: float = 0.0,
    start_timeout: float = 120.0,
) -> Path:
    config = join or joinconfig.JoinConfig(
        server=server.url,
        boot_dir="/boot/firmware",
        hostname_pattern="edge-{serial}",
        node_labels=["fleet=edge"],
        kubelet_args=["max-pods=60"],
        build_time=build_time,
        backoff_cap=0.3,
        clock_sync_timeout=clock_sync_timeout,
        recheck_interval=recheck_interval,
        start_timeout=start_timeout,
    )
    write(root / "etc/pifleet/join.json", joinconfig.dump_join_config(config))
    boot = root / "boot/firmware/pifleet"
    boot.mkdir(parents=True)
    if boot_token:
        write(boot / "token", token.encode() + b"\n", 0o644)
    else:
        write(root / "etc/pifleet/token", token.encode() + b"\n", 0o600)
    if hostname or labels:
        device = joinconfig.DeviceConfig(hostname=hostname, node_labels=list(labels))
        write(boot / "device.json", joinconfig.dump_device_config(device))
    if node_password:
        write(boot / "node-password", node_password.encode() + b"\n", 0o644)
    write(root / "proc/net/route", (ROUTE_HEADER + DEFAULT_ROUTE).encode())
    write(
        root / "proc/cgroups",
        b"#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t0\t1\t1\nmemory\t0\t90\t1\n",
    )
    write(root / "sys/firmware/devicetree/base/serial-number", SERIAL.encode() + b"\0")
    write(root / "sys/fs/cgroup/cgroup.controllers", b"cpuset cpu io memory hugetlb pids rdma\n")
    write(root / "etc/machine-id", b"0123456789abcdef0123456789abcdef\n")
    write(root / "etc/hosts", b"127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n")
    write(root / "run/systemd/timesync/synchronized", b"")
    k3s = root / "usr/local/bin/k3s"
    k3s.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "k3s-standin", k3s)
    k3s.chmod(0o755)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "pifleet-firstboot.service").symlink_to(
        "/etc/systemd/system/pifleet-firstboot.service"
    )
    return root


def write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def agent_env(extra: dict[str, str] | None = None, python: str | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "K3S_STANDIN_PERIOD": "0.5",
        "PYTHONPATH": str(REPO),
        "PIFLEET_SYSTEMCTL": str(FIXTURES / "systemctl-standin"),
        "PIFLEET_JOURNALCTL": str(FIXTURES / "journalctl-standin"),
        **(extra or {}),
    }


def run_agent(
    root: Path,
    extra_env: dict[str, str] | None = None,
    timeout: float = 120,
    python: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python or sys.executable, "-m", "firstboot", "run", "--root", str(root)],
        env=agent_env(extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(root),
    )


def run_until(root: Path, needle: str, timeout: float = 120) -> str:
    """Run the agent until `needle` appears on its stderr, then kill it; the stderr so far."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "firstboot", "run", "--root", str(root)],
        env=agent_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(root),
    )
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if needle in line:
                break
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()
    return "".join(seen)


def stop_services(root: Path) -> None:
    """Kill every supervisor and service the systemctl stand-in started under `root`."""
    for pid_file in (root / "run/standin-systemd").glob("*.pid"):
        for pid in pid_file.read_text().split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)


def states_seen(output: str) -> list[str]:
    return [
        line.split()[1].removeprefix("state=")
        for line in output.splitlines()
        if line.startswith("pifleet-firstboot: state=")
    ]


def texts_under(root: Path) -> dict[Path, bytes]:
    """Every regular file under `root` (the device) with its content."""
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pinned_form(token: str, ca_hash: str, user: str = "node") -> str:
    """What K3s's token file must hold after the agent verified `token` (K3s's own rewrite)."""
    from firstboot.token import parse

    parsed = parse(token)
    return parsed.pinned_text(ca_hash, user)


__all__ = ["DEFAULT_NODE", "make_device", "replace", "run_agent", "stop_services"]
