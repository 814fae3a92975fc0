"""A server measures its disk as etcd will use it (issue 24, item 13, device half): fdatasync
latency of 2300-byte appends in the K3s data directory, p50/p99 in one line, a warning naming
etcd's risk above its 10 ms p99, on the card and in `pifleet diagnose`; agents measure nothing.
Real files in tmp_path; a slow disk is a sync that really takes 20 ms."""

from __future__ import annotations

import io
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from builder.testserver.server import K3sTestServer
from firstboot import fsyncprobe
from firstboot.card import CardReport
from firstboot.paths import Root
from firstboot.redact import Redactor
from firstboot.report import Reporter
from tests.agent_helpers import make_device, run_agent, stop_services
from tests.cluster_devices import cluster_files, first_server
from tests.conftest import pifleet
from tests.image_edit import put_report

SERVER_DIR = "var/lib/rancher/k3s/server"
CARD = "boot/firmware/pifleet/report.json"


class Watch:
    """A sync that really syncs (then sleeps `delay` s) and notes what the file looked like."""

    def __init__(self, directory: Path, delay: float = 0.0) -> None:
        self.path, self.delay = directory / fsyncprobe.PROBE_NAME, delay
        self.modes: set[int] = set()
        self.sizes: list[int] = []

    def __call__(self, fd: int) -> None:
        os.fdatasync(fd)
        self.modes.add(os.fstat(fd).st_mode)
        self.sizes.append(self.path.stat().st_size)  # the file is in the directory measured
        if self.delay:
            time.sleep(self.delay)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: a file the probe left to the umask would be 0666, not 0600."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_the_probe_times_real_syncs_in_the_directory_and_leaves_nothing(
    tmp_path: Path, open_umask: None
) -> None:
    (tmp_path / "keep").write_bytes(b"etcd's own files stay")
    before = sorted(os.listdir(tmp_path))
    watch = Watch(tmp_path)
    found = fsyncprobe.measure("/var/lib/rancher/k3s/server", str(tmp_path), watch, writes=60)
    assert found.writes == 60 and len(watch.sizes) == 60
    assert 0 < found.p50_ms <= found.p99_ms
    assert watch.sizes == [fsyncprobe.BLOCK * n for n in range(1, 61)]  # appends, as fio
    assert watch.modes == {stat.S_IFREG | 0o600}  # 0600 from the first write, umask or not
    assert sorted(os.listdir(tmp_path)) == before and not watch.path.exists()
    assert fsyncprobe.WRITES * fsyncprobe.BLOCK <= 1_000_000 and fsyncprobe.BUDGET <= 5


def test_a_power_cuts_leftover_is_replaced_and_removed(tmp_path: Path, open_umask: None) -> None:
    leftover = tmp_path / fsyncprobe.PROBE_NAME
    leftover.write_bytes(b"x" * 5000)
    leftover.chmod(0o644)
    watch = Watch(tmp_path)
    fsyncprobe.measure("/var/lib", str(tmp_path), watch, writes=3)
    assert watch.sizes[0] == fsyncprobe.BLOCK and watch.modes == {stat.S_IFREG | 0o600}
    assert os.listdir(tmp_path) == []


def test_a_slow_disk_is_measured_as_slow_and_warned_with_the_risk(tmp_path: Path) -> None:
    watch = Watch(tmp_path, delay=0.020)
    found = fsyncprobe.measure("/var/lib/rancher/k3s/server", str(tmp_path), watch, writes=25)
    assert found.p50_ms >= 20 and found.p99_ms >= 20 and found.slow
    text = fsyncprobe.warning(found)
    assert text is not None and "\n" not in text
    assert text.startswith(f"fsync p99 {found.p99_ms:.1f} ms on /var/lib/rancher/k3s/server")
    assert "over etcd's 10 ms" in text and "leader elections" in text
    assert "SSD or USB disk" in text and "role: agent" in text
    assert os.listdir(tmp_path) == []


def test_the_limit_is_etcds_p99_of_10_ms() -> None:
    fast = fsyncprobe.Measure("/var/lib", 300, 1.0, 9.9)
    slow = fsyncprobe.Measure("/var/lib", 300, 1.0, 10.1)
    assert fsyncprobe.warning(fast) is None and fsyncprobe.warning(slow)
    assert fsyncprobe.percentile([float(n) for n in range(1, 101)], 0.99) == 99.0
    assert fsyncprobe.percentile([float(n) for n in range(1, 101)], 0.5) == 50.0


def test_the_time_budget_bounds_a_very_slow_disk(tmp_path: Path) -> None:
    watch = Watch(tmp_path, delay=0.020)
    started = time.monotonic()
    found = fsyncprobe.measure("/var/lib", str(tmp_path), watch, writes=300, budget=0.3)
    assert time.monotonic() - started < 1.0
    assert 5 <= found.writes < 30 and found.slow
    assert os.listdir(tmp_path) == []


def test_a_slow_server_disk_reaches_diagnose_through_the_card(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    """The agent's reporter and card, the probe on a real directory with a 20 ms sync, the
    card on a real image, and `pifleet diagnose` reading it back."""
    device = tmp_path / "device"
    (device / SERVER_DIR).mkdir(parents=True)
    boot = device / "boot/firmware/pifleet"
    boot.mkdir(parents=True)
    console = io.StringIO()
    reporter = Reporter(console)
    reporter.listeners.append(CardReport(boot, "edge-srv-1", "https://k3s:6443", Redactor()))
    reporter.state("start", "starting K3s")
    found = fsyncprobe.tell(
        Root(device),
        lambda text: reporter.progress("start", text),
        reporter.warning,
        Watch(device / SERVER_DIR, delay=0.020),
        writes=20,
    )
    assert found is not None and found.directory == "/var/lib/rancher/k3s/server"
    assert "pifleet-firstboot: start: fsync: p99 " in console.getvalue()
    card = json.loads((boot / "report.json").read_text())
    assert card["fsync"].startswith("p99 ") and "on /var/lib/rancher/k3s/server" in card["fsync"]
    slow = [w for w in card["warnings"] if w.startswith("fsync p99 ")]
    assert slow == [fsyncprobe.warning(found)]
    assert os.listdir(device / SERVER_DIR) == []
    image = make_image("card.img")
    put_report(image, card)
    done = pifleet("diagnose", str(image), cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # not joined yet: the warning is no failure
    lines = done.stdout.splitlines()
    assert f"  fsync: {card['fsync']}" in lines
    warned = [line for line in lines if line.startswith("  warning: fsync p99 ")]
    assert len(warned) == 1 and "leader elections" in warned[0] and "role: agent" in warned[0]


def test_an_unmeasurable_disk_is_a_line_not_a_failure(tmp_path: Path) -> None:
    (tmp_path / "var/lib").mkdir(parents=True)
    said: list[str] = []

    def broken(fd: int) -> None:
        raise OSError(30, "Read-only file system")

    found = fsyncprobe.tell(Root(tmp_path), said.append, said.append, broken)
    assert found is None
    assert said == ["fsync: not measured on /var/lib: Read-only file system"]
    assert os.listdir(tmp_path / "var/lib") == []


# -- the agent: a server measures before K3s starts, an agent never ---------------------------


def test_a_server_measures_its_data_directory_before_k3s_starts(
    tmp_path: Path, roots: list[Path], make_image: Callable[..., Path]
) -> None:
    first, _port, env = first_server(roots, tmp_path, cluster_files())
    proc = run_agent(first, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    probed = [i for i, line in enumerate(lines) if "start: fsync: p99 " in line]
    started = [i for i, line in enumerate(lines) if "joined node=edge-srv-1" in line]
    assert len(probed) == 1 and started and probed[0] < started[0], proc.stderr
    assert "over 300 writes of 2300 bytes" in lines[probed[0]]
    assert "on /var/lib/rancher/k3s/server " in lines[probed[0]]  # db/ is K3s's, made later
    assert not (first / SERVER_DIR / fsyncprobe.PROBE_NAME).exists()
    card = json.loads((first / CARD).read_text())
    assert lines[probed[0]].endswith(card["fsync"])
    image = make_image("card.img")
    put_report(image, card)
    done = pifleet("diagnose", str(image), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"  fsync: {card['fsync']}" in done.stdout.splitlines()


def test_an_agent_measures_nothing(tmp_path: Path) -> None:
    device = tmp_path / "device"
    with K3sTestServer(state_dir=tmp_path / "s") as server:
        make_device(device, server, server.mint_token())
        try:
            proc = run_agent(device)
        finally:
            stop_services(device)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert fsyncprobe.PREFIX not in proc.stderr  # no line, measured or not
    card = json.loads((device / CARD).read_text())
    assert card["joined"] and "fsync" not in card
