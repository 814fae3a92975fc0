"""A flashing station run for real (`pifleet flash --station` in a subprocess) over a
fabricated sysfs (`fake_sysfs`), its lines read as they come; and what a flashed card says
it is (the host name in its seed), read with mtools."""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TEST_TOKEN, fleet_yaml, pifleet
from tests.image_read import fat_read
from tests.layouts import make_pi_image

GOLDEN = "out/edge-fleet.img"
SECTORS = 1_300_000  # a 634 MiB card: bigger than the 568 MiB image


def build_fleet(folder: Path, devices: int) -> Path:
    """A golden image of `devices` devices (edge-001 ...), built by the real `pifleet build`."""
    make_pi_image(folder / "base.img")
    (folder / "token").write_text(TEST_TOKEN + "\n")
    (folder / "token").chmod(0o600)
    listed = "devices:\n" + "".join(
        f"  - {{hostname: edge-{i:03d}}}\n" for i in range(1, devices + 1)
    )
    (folder / "fleet.yaml").write_text(fleet_yaml(devices=listed))
    proc = pifleet("build", "fleet.yaml", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    (folder / "base.img").unlink()
    return folder


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A golden image of edge-001 ... edge-004, built once per test module."""
    return build_fleet(tmp_path_factory.mktemp("fleet-of-four"), devices=4)


@pytest.fixture
def fleet_copy(four_devices: Path, tmp_path: Path) -> Path:
    """A private copy of that fleet's folder (sparse), so a test may change anything."""
    d = tmp_path / "fleet"
    subprocess.run(["cp", "-a", "--sparse=always", str(four_devices), str(d)], check=True)
    return d


def hostname_of(card: Path) -> str:
    """The device a card was personalized as: its seed's local-hostname."""
    meta = yaml.safe_load(fat_read(card, "/meta-data"))
    return str(meta["local-hostname"])


class Station:
    """`pifleet flash GOLDEN --config fleet.yaml --station --yes --system-root ROOT`."""

    def __init__(self, folder: Path, root: Path, *extra: str) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "builder", "flash", GOLDEN, "--config", "fleet.yaml",
             "--station", "--yes", "--system-root", str(root), *extra],
            cwd=folder, env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        """The next line matching `pattern`; every line read is kept in `lines`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(left, 0.01))
            except queue.Empty:
                raise AssertionError(
                    f"no line like {pattern!r} in {timeout} s: {self.lines}"
                ) from None
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        return self.finish(timeout)

    def finish(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        with contextlib.suppress(AssertionError):
            while True:
                self.wait_for(r"\A\Z|.", 0.5)
        return code

    def output(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(30)


@contextlib.contextmanager
def running(folder: Path, root: Path, *extra: str) -> Iterator[Station]:
    """A station that has said it waits for cards; killed on the way out, whatever happened."""
    station = Station(folder, root, *extra)
    try:
        station.wait_for("station: waiting for cards")
        yield station
    finally:
        station.kill()


@contextlib.contextmanager
def ledger_held(path: Path) -> Iterator[None]:
    """Hold the ledger's lock, as a second station appending to it would: a round that has
    written, verified and personalized its card waits here before it records it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def send(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
