"""Shared fixtures: synthetic Pi images, a fleet config, and running the real CLI."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.layouts import LAYOUTS, elf_for, make_pi_image

# A shell without job control (`nohup make test &` in a script) starts pytest with SIGINT
# ignored, and every child would inherit that: the tests that stop a child with SIGINT, as
# Ctrl-C does, would wait for it in vain. A handled signal is reset to the default at exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parent.parent
# cluster_devices: the `cluster` and `roots` fixtures of the agent-as-a-server tests.
pytest_plugins = ["tests.suite_plugin", "tests.cluster_devices"]
# A syntactically valid secure token used only by tests; searched for in every output.
TEST_TOKEN = "K10" + "7e" * 32 + "::server:s3cr3t-t0ken-never-printed"


def pifleet(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the real `pifleet` CLI (python -m builder) from this checkout."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "builder", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Free space the temporary directory needs at the start of a run (measured peaks: about 1.5 GB
# without QEMU boots, about GB_BOOTS with them; pyproject.toml's retention policy "failed"
# removes each passing test's directory as it ends).
GB_PLAIN = 2
GB_BOOTS = 12


def pytest_collection_finish(session: pytest.Session) -> None:
    """Stop at once, in one line, when the temporary directory's disk cannot hold the run:
    a full disk otherwise shows as hundreds of unrelated errors."""
    if session.config.option.collectonly or not session.items:
        return
    where = Path(session.config.option.basetemp or tempfile.gettempdir()).resolve()
    while not where.exists():
        where = where.parent
    boots = any(item.get_closest_marker("slow") for item in session.items)
    need = GB_BOOTS if boots else GB_PLAIN
    free = shutil.disk_usage(where).free / 1e9
    if free < need:
        pytest.exit(
            f"only {free:.1f} GB free in {where}; the selected tests need about {need} GB "
            "(free some space or pass --basetemp DIR on a larger disk)",
            returncode=1,
        )


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Path]:
    """make_image(name='base.img', layout='trixie', arch='arm64', **kw) -> path of a fresh image."""

    def make(
        name: str = "base.img", layout: str = "trixie", arch: str = "arm64", **kw: object
    ) -> Path:
        return make_pi_image(tmp_path / name, LAYOUTS[layout], arch, **kw)  # type: ignore[arg-type]

    return make


@pytest.fixture
def fleet_dir(tmp_path: Path, make_image: Callable[..., Path]) -> Path:
    """A directory with base.img (Trixie arm64), a 0600 token file and fleet.yaml using both."""
    make_image("base.img")
    token = tmp_path / "token"
    token.write_text(TEST_TOKEN + "\n")
    token.chmod(0o600)
    (tmp_path / "fleet.yaml").write_text(fleet_yaml())
    return tmp_path


def fleet_yaml(**overrides: str) -> str:
    """A valid fleet file; keyword arguments replace whole top-level sections (YAML text)."""
    sections = {
        "name": "name: edge-fleet",
        "arch": "arch: arm64",
        "base": "base: {path: base.img}",
        "k3s": f"k3s: {{binary: {elf_for('arm64')}}}",
        "cluster": (
            "cluster:\n  server: https://k3s.example.net:6443\n  token_file: token\n"
            "  node_labels: {site: berlin}\n  node_taints: ['edge=true:NoSchedule']"
        ),
        "users": (
            "users:\n  - name: ops\n    sudo: true\n    groups: [adm]\n"
            "    ssh_authorized_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@laptop']"
        ),
        "output": "output: {dir: out}",
        "devices": "",
        "network": "",
        "extra": "",
    }
    sections.update(overrides)
    return "\n".join(v for v in sections.values() if v) + "\n"


# The agent setting every arm64 boot test can live with: the K3s join boots need a final
# verdict to be re-checked within seconds (tests/test_boot_k3s.py), and a retry within 5 s
# of a server phase's end (its 20 s phases), where a device would wait up to a minute.
BOOT_AGENT = "agent: {recheck_interval: 15, backoff_cap: 5}\n"


# A Wi-Fi network whose passphrase comes from the environment at build time: the shared arm64
# device carries it, so that tests/test_boot_secrets.py can look for it after the boots.
PSK_NAME = "PIFLEET_TEST_WIFI_PASSWORD"
PSK = "not-a-real-wifi-passphrase-7"
WIFI = "network:\n  wifi: {ssid: edge-net, password_env: " + PSK_NAME + ", country: DE}\n"


@pytest.fixture(scope="session")
def arm64_device(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """ONE personalized arm64 image (and its test server's state) for every arm64 boot test:
    each boot runs on its own copy-on-write overlay, so the image is built once per run. It
    has a Wi-Fi network (its PSK a secret the secrets test looks for); QEMU has no Wi-Fi.

    Its base is laid out as Raspberry Pi OS ships it, with a Raspberry Pi kernel only
    (tests/pi_layout.py), so every arm64 boot boots the kernel boot-test supplies."""
    from tests.boot_helpers import base_image, device_image
    from tests.pi_layout import pi_kernel_only

    work = tmp_path_factory.mktemp("arm64")
    base = pi_kernel_only(base_image("arm64"), work / "raspios-layout.img")
    os.environ[PSK_NAME] = PSK
    try:
        return device_image(work, "arm64", BOOT_AGENT + WIFI, base_path=base)
    finally:
        os.environ.pop(PSK_NAME, None)


@pytest.fixture(scope="session")
def arm64_boot_test(
    arm64_device: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """`pifleet boot-test --keep` of the shared arm64 device, run once: test_boot checks what
    it reports, test_boot_secrets reboots a copy of the disk it left."""
    from tests.boot_helpers import run_boot_test

    return run_boot_test(*arm64_device, tmp_path_factory.mktemp("arm64-boot-test"))
