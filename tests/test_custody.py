"""Secrets leave the boot partition (issue 11, item 2, device side): firstboot/custody.py on
the seed a real `pifleet build` + `personalize` wrote, on a device root directory.

The raw-FAT proof (no secret byte in any cluster after a first boot and a reboot) is the
QEMU test in tests/test_boot_secrets.py; here every file, mode and power-cut point is checked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from builder.testserver.server import K3sTestServer
from firstboot import custody
from firstboot.paths import Root
from firstboot.retry import Terminal
from tests.agent_helpers import make_device, run_agent, stop_services
from tests.conftest import REPO, TEST_TOKEN, fleet_yaml, pifleet
from tests.image_read import fat_read

PSK = "correct-horse-battery-staple-42"
NODE_PASSWORD = "0123456789abcdef0123456789abcdef"
BOOT = "boot/firmware"
DEVICE = "edge-001"


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The boot-partition files of a personalized device with Wi-Fi, host key and node password,
    as the real CLI writes them, plus a boot-partition token."""
    from tests.layouts import LAYOUTS, make_pi_image

    work = tmp_path_factory.mktemp("seed")
    make_pi_image(work / "base.img", LAYOUTS["trixie"], "arm64")
    (work / "token").write_text(TEST_TOKEN + "\n")
    (work / "token").chmod(0o600)
    network = "network:\n  wifi: {ssid: edge-net, password_env: WIFI_PSK, country: DE}"
    devices = f"devices:\n  - hostname: {DEVICE}"
    (work / "fleet.yaml").write_text(fleet_yaml(network=network, devices=devices))
    built = pifleet("build", "fleet.yaml", cwd=work, env={"WIFI_PSK": PSK})
    assert built.returncode == 0, built.stderr
    image = work / "device.img"
    done = pifleet(
        "personalize", "out/edge-fleet.img", "--config", "fleet.yaml", "--device", DEVICE,
        "-o", str(image), cwd=work, env={"WIFI_PSK": PSK},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    files = {n: fat_read(image, "/" + n) for n in ("user-data", "network-config", "meta-data")}
    files["pifleet/node-password"] = fat_read(image, "/pifleet/node-password")
    files["pifleet/device.json"] = fat_read(image, "/pifleet/device.json")
    files["pifleet/token"] = (TEST_TOKEN + "\n").encode()
    assert b"PRIVATE KEY" in files["user-data"] and wifi_key(files) in files["network-config"]
    return files


def device_root(tmp: Path, seed: dict[str, bytes], cmdline: bytes = b"console=ttyAMA0\n") -> Path:
    root = tmp / "device"
    for name, data in seed.items():
        path = root / BOOT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "proc").mkdir()
    (root / "proc/cmdline").write_bytes(cmdline)
    return root


def wifi_key(seed: dict[str, bytes]) -> bytes:
    """The Wi-Fi key as network-config holds it (Imager writes the derived PSK)."""
    wifis = yaml.safe_load(seed["network-config"])["network"]["wifis"]
    return str(wifis["wlan0"]["access-points"]["edge-net"]["password"]).encode()


def secrets_of(seed: dict[str, bytes]) -> list[bytes]:
    key = yaml.safe_load(seed["user-data"])["ssh_keys"]["ed25519_private"].encode()
    lines = [ln for ln in key.splitlines() if ln and b"-----" not in ln]
    return [
        *lines,
        wifi_key(seed),
        seed["pifleet/node-password"].strip(),
        TEST_TOKEN.rsplit(":", 1)[1].encode(),
    ]


def boot_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((root / BOOT).rglob("*")) if p.is_file())


def custody_cli(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "firstboot", "custody", "--root", str(root)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_in_custody(root: Path, seed: dict[str, bytes]) -> None:
    """No secret on the boot partition; each in the root filesystem, 0600; the rest intact."""
    left = boot_bytes(root)
    for number, secret in enumerate(secrets_of(seed)):
        assert secret not in left, f"secret {number} of the seed is still on the boot partition"
    kept = root / custody.SEED_DIR.lstrip("/")
    for name in ("user-data", "network-config", "meta-data"):
        assert (kept / name).read_bytes() == seed[name], f"the kept {name} is not the seed's"
        assert (kept / name).stat().st_mode & 0o777 == 0o600, f"the kept {name} is not 0600"
    for path, name in (("etc/pifleet/token", "pifleet/token"),
                       ("etc/pifleet/node-password", "pifleet/node-password")):  # fmt: skip
        assert (root / path).read_bytes() == seed[name], f"/{path} is not the seed's {name}"
        assert (root / path).stat().st_mode & 0o777 == 0o600, f"/{path} is not 0600"
        assert not (root / BOOT / name).exists(), f"{name} is still on the boot partition"
    # What stays on the boot partition is the same seed, minus the secrets.
    user_data = yaml.safe_load((root / BOOT / "user-data").read_bytes())
    original = yaml.safe_load(seed["user-data"])
    for key in ("ssh_keys", "ssh_deletekeys", "ssh_genkeytypes"):
        original.pop(key, None)
    assert user_data == original, "user-data changed beyond its host keys"
    assert (root / BOOT / "user-data").read_bytes().startswith(b"#cloud-config\n"), (
        "user-data lost its #cloud-config line"
    )
    network = yaml.safe_load((root / BOOT / "network-config").read_bytes())
    access_points = list(network["network"]["wifis"]["wlan0"]["access-points"])
    assert access_points == ["edge-net"], f"network-config's access points: {access_points}"
    assert (root / BOOT / "meta-data").read_bytes() == seed["meta-data"], "meta-data changed"
    assert (root / BOOT / "pifleet/device.json").read_bytes() == seed["pifleet/device.json"], (
        "device.json changed"
    )
    # Rewritten in place: same size, so no FAT cluster was freed or allocated.
    for name in ("user-data", "network-config"):
        size = (root / BOOT / name).stat().st_size
        assert size == len(seed[name]), f"{name} is {size} bytes, not {len(seed[name])}"


def test_custody_moves_every_secret_into_the_root_filesystem(
    seed: dict[str, bytes], tmp_path: Path
) -> None:
    root = device_root(tmp_path, seed)
    first = custody_cli(root)
    assert first.returncode == 0, first.stderr
    assert_in_custody(root, seed)
    lines = first.stdout.splitlines()
    assert lines[-1] == "pifleet-custody: the boot partition holds no secrets (4 moved)"
    assert all(line.startswith("pifleet-custody: ") for line in lines)
    for secret in secrets_of(seed):
        assert secret.decode() not in first.stdout + first.stderr
    again = custody_cli(root)
    assert again.stdout.splitlines() == ["pifleet-custody: the boot partition holds no secrets"]
    assert_in_custody(root, seed)


def test_firstrun_script_goes_only_once_it_has_run(seed: dict[str, bytes], tmp_path: Path) -> None:
    running = b"console=ttyAMA0 systemd.run=/boot/firmware/firstrun.sh systemd.unit=x\n"
    root = device_root(tmp_path, seed, cmdline=running)
    script = root / BOOT / "firstrun.sh"
    script.write_text(f"#!/bin/bash\npsk={PSK}\n")
    assert custody_cli(root).returncode == 0
    assert script.exists(), "removed while this boot still runs it"
    (root / "proc/cmdline").write_bytes(b"console=ttyAMA0\n")
    assert custody_cli(root).returncode == 0
    assert not script.exists()


class PowerCut(Exception):
    pass


def cut_at(monkeypatch: pytest.MonkeyPatch, step: int, half: bool) -> list[str]:
    """Make custody's `step`-th disk operation the last one (a write may stop half-way)."""
    seen: list[str] = []

    def wrap(name: str, real: Callable[..., object]) -> Callable[..., object]:
        def op(*args: object) -> object:
            seen.append(name)
            if len(seen) - 1 == step:
                if half:
                    path = Path(str(args[0]))
                    data = bytes(path.stat().st_size) if name == "_zero" else bytes(args[1])  # type: ignore[call-overload]
                    with open(path, "r+b") as f:
                        f.write(data[: len(data) // 2])
                raise PowerCut(name)
            return real(*args)

        return op

    for name in ("write_atomic", "_write_at_start", "_zero"):
        monkeypatch.setattr(custody, name, wrap(name, getattr(custody, name)))
    monkeypatch.setattr(custody.os, "unlink", wrap("unlink", os.unlink))
    return seen


def test_a_power_cut_at_any_step_loses_nothing(
    seed: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut after every disk operation of a whole run (and half-way through every FAT write);
    the next boot's run must end exactly where an uninterrupted one does."""
    with monkeypatch.context() as m:
        steps = cut_at(m, 10**6, False)
        custody.secure(Root(device_root(tmp_path / "count", seed)), "/" + BOOT)
    assert len(steps) >= 12, steps
    for step in range(len(steps)):
        for half in (False, True) if steps[step] in ("_zero", "_write_at_start") else (False,):
            case = tmp_path / f"cut-{step}-{half}"
            root = device_root(case, seed)
            with monkeypatch.context() as m:
                cut_at(m, step, half)
                with pytest.raises(PowerCut):
                    custody.secure(Root(root), "/" + BOOT)
            custody.secure(Root(root), "/" + BOOT)
            assert_in_custody(root, seed)
            shutil.rmtree(case)


def test_a_file_that_cannot_be_moved_is_one_clear_line(
    seed: dict[str, bytes], tmp_path: Path
) -> None:
    root = device_root(tmp_path, seed)
    (root / "etc/pifleet").mkdir(parents=True)
    (root / "etc/pifleet/token").mkdir()  # cannot be replaced by a file
    with pytest.raises(Terminal, match=r"^cannot move the secrets off the boot partition: .*token"):
        custody.secure(Root(root), "/" + BOOT)
    proc = custody_cli(root)
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[-1].startswith("pifleet-custody: failed: cannot move")
    assert TEST_TOKEN.rsplit(":", 1)[1] not in proc.stdout + proc.stderr


def test_a_device_that_never_joins_still_has_no_secret_on_its_card(tmp_path: Path) -> None:
    """Before: the boot token and node password stayed on the FAT until a join, forever if
    it failed. Now the agent takes them into custody before it uses the network."""
    with K3sTestServer(state_dir=tmp_path / "server") as server:
        token = server.mint_token()
        wrong = token.rsplit(":", 1)[0] + ":not-the-password"
        root = make_device(
            tmp_path / "device", server, wrong, boot_token=True, node_password=NODE_PASSWORD
        )
        try:
            proc = run_agent(root)
        finally:
            stop_services(root)
    assert proc.returncode == 2 and "failed state=verify" in proc.stderr
    boot = root / BOOT / "pifleet"
    assert not (boot / "token").exists() and not (boot / "node-password").exists()
    assert (root / "etc/pifleet/token").read_text().strip() == wrong
    assert (root / "etc/pifleet/node-password").stat().st_mode & 0o777 == 0o600
    card = json.loads((boot / "report.json").read_text())
    assert NODE_PASSWORD not in json.dumps(card) and "not-the-password" not in json.dumps(card)
    assert "not-the-password" not in proc.stderr
