"""Bad input gets one clear line naming the file and key, exit 2, and nothing written
(issue 11, "Bad input"). Every case runs the real CLI on a real fleet folder."""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
from pathlib import Path

import pytest

from builder.config.fleet import load
from builder.util.errors import UserError
from tests.conftest import TEST_TOKEN, fleet_yaml, pifleet
from tests.image_edit import write_root_files
from tests.layouts import elf_for


def refused(fleet_dir: Path, *needles: str, env: dict[str, str] | None = None) -> str:
    """Run `build`; it must exit 2 with one error line holding every needle, writing nothing."""
    proc = pifleet("build", "fleet.yaml", cwd=fleet_dir, env=env, timeout=120)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("pifleet: ")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(errors) == 1 and len(errors[0]) < 400, proc.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert not (fleet_dir / "out").exists(), "an empty output folder was left behind"
    return errors[0]


@pytest.mark.parametrize(
    ("section", "needles"),
    [
        ("output: {dir: out, size: 999999999T}", ["output.size"]),
        ("agent: {backoff_cap: .nan}", ["agent.backoff_cap"]),
        ("agent: {backoff_cap: .inf}", ["agent.backoff_cap"]),
        ("agent: {backoff_cap: 1.0e+38}", ["agent.backoff_cap"]),
        ("agent: {clock_sync_timeout: .nan}", ["agent.clock_sync_timeout"]),
    ],
)
def test_numbers_have_bounds(fleet_dir: Path, section: str, needles: list[str]) -> None:
    key = section.split(":")[0]
    (fleet_dir / "fleet.yaml").write_text(
        fleet_yaml(**{key if key == "output" else "extra": section})
    )
    refused(fleet_dir, "fleet.yaml", *needles)


@pytest.mark.parametrize(
    "server",
    [
        "https://k3s example.net:6443",
        "https://k3s.example.net:99999",
        "https://k3s.example.net:0",
        "https://user@k3s.example.net:6443",
        "https://k3s.example.net:6443/path",
        "https://:6443",
    ],
)
def test_cluster_server_is_parsed_fully(fleet_dir: Path, server: str) -> None:
    cluster = f"cluster:\n  server: '{server}'\n  token_file: token"
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(cluster=cluster))
    refused(fleet_dir, "fleet.yaml: cluster.server")


def test_cluster_server_accepts_host_port_and_addresses(tmp_path: Path) -> None:
    for server in ("https://k3s.example.net:6443/", "https://10.0.0.1", "https://[fd00::1]:6443"):
        cluster = f"cluster:\n  server: '{server}'\n  token_file: token"
        (tmp_path / "f.yaml").write_text(fleet_yaml(cluster=cluster))
        assert load(tmp_path / "f.yaml").cluster.server == server.rstrip("/")


def test_alias_bomb_is_bounded(fleet_dir: Path) -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(extra="x-bomb:\n  " + "\n  ".join(lines)))
    refused(fleet_dir, "fleet.yaml", "aliases")


def test_dev_zero_and_huge_files_are_refused(fleet_dir: Path) -> None:
    proc = pifleet("build", "/dev/zero", cwd=fleet_dir, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("pifleet: error: /dev/zero: larger than")
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(extra="#" + "x" * (2 << 20)))
    refused(fleet_dir, "fleet.yaml: larger than")


def test_long_values_are_cut_short_in_errors(fleet_dir: Path) -> None:
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(extra="timezone: x " + "x" * 310_000))
    error = refused(fleet_dir, "fleet.yaml: timezone")
    assert len(error) < 200


def test_nul_byte_has_a_line_number(fleet_dir: Path) -> None:
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml() + "timezone: Europe/\0Berlin\n")
    lines = fleet_yaml().count("\n") + 1
    refused(fleet_dir, f"fleet.yaml:{lines}: NUL byte")


@pytest.mark.parametrize(
    ("users", "key"),
    [
        ('users: [{name: ops, shell: "/bin/bash\\nroot:x:0:0"}]', "users[0].shell"),
        ('users: [{name: ops, ssh_authorized_keys: ["ssh-ed25519 AAAA\\0x"]}]', "users[0].ssh_authorized_keys[0]"),
        ('users: [{name: ops, groups: ["adm\\u200b"]}]', "users[0].groups[0]"),
    ],
)  # fmt: skip
def test_control_characters_are_refused(fleet_dir: Path, users: str, key: str) -> None:
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(users=users))
    refused(fleet_dir, f"fleet.yaml: {key}: control or invisible character")


def test_token_file_open_to_others_is_refused(fleet_dir: Path) -> None:
    (fleet_dir / "token").chmod(0o644)
    refused(fleet_dir, "cluster.token_file", "chmod 600")


@pytest.mark.parametrize(
    "command",
    [
        ("token", "check", "--server", "https://127.0.0.1:9", "--token-file", "tok"),
        ("token", "pin", "https://127.0.0.1:9", "--token-file", "tok", "-o", "pinned", "--yes"),
        ("boot-test", "base.img", "--server", "https://127.0.0.1:9", "--token-file", "tok"),
    ],
)
def test_token_file_option_open_to_others_is_refused(
    fleet_dir: Path, command: tuple[str, ...]
) -> None:
    """`--token-file` follows cluster.token_file's rule: only its owner may read it."""
    (fleet_dir / "tok").write_text(TEST_TOKEN + "\n")
    (fleet_dir / "tok").chmod(0o640)
    proc = pifleet(*command, cwd=fleet_dir, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "pifleet: error: --token-file: tok is open to other users (mode 0640); run: chmod 600 tok"
    ]
    secret = TEST_TOKEN.rsplit(":", 1)[1]
    assert secret not in proc.stdout + proc.stderr
    assert not (fleet_dir / "pinned").exists()


def test_token_env_reaches_no_child_tool(fleet_dir: Path) -> None:
    """cluster.token_env and every Wi-Fi passphrase variable (the fleet's and a device's) are
    read once and removed from the environment pifleet's tools get: every tool the build runs
    is watched through a PATH shim that records its environment."""
    shims, seen = fleet_dir / "shims", fleet_dir / "seen"
    shims.mkdir()
    seen.mkdir()
    real_path = os.environ["PATH"]
    for tool in ("debugfs", "mcopy", "mdir", "mtype", "mmd", "mattr", "e2fsck", "sfdisk", "xz"):
        real = shutil.which(tool, path=real_path)
        if real is None:
            continue
        shim = shims / tool
        shim.write_text(f'#!/bin/sh\nenv > "{seen}/{tool}.$$"\nexec "{real}" "$@"\n')
        shim.chmod(0o755)
    section = "cluster:\n  server: https://k3s.example.net:6443\n  token_env: FLEET_TOKEN"
    wifi = "network:\n  wifi: {ssid: edge, country: DE, password_env: FLEET_PSK}"
    device = "devices: [{hostname: pi-1, wifi: {ssid: dev, country: DE, password_env: DEV_PSK}}]"
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(cluster=section, network=wifi, devices=device))
    psks = {"FLEET_PSK": "fleet-passphrase-1", "DEV_PSK": "device-passphrase-2"}
    env = {"FLEET_TOKEN": TEST_TOKEN, **psks, "PATH": f"{shims}:{real_path}"}
    proc = pifleet("build", "fleet.yaml", cwd=fleet_dir, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    records = sorted(seen.iterdir())
    assert any(r.name.startswith("debugfs.") for r in records), records
    assert any(r.name.startswith("mcopy.") for r in records), records
    secrets = [TEST_TOKEN.rsplit(":", 1)[1], *psks.values()]
    for record in records:
        text = record.read_text()
        for needle in ["FLEET_TOKEN", *psks, *secrets]:
            assert needle not in text, (record.name, needle)


def test_truncated_elf_is_not_k3s(fleet_dir: Path) -> None:
    for size in (40, 60):
        (fleet_dir / "k3s").write_bytes(elf_for("arm64").read_bytes()[:size])
        (fleet_dir / "fleet.yaml").write_text(fleet_yaml(k3s="k3s: {binary: k3s}"))
        proc = pifleet("build", "fleet.yaml", cwd=fleet_dir, timeout=120)
        assert proc.returncode == 2 and "not an ELF executable" in proc.stderr, proc.stderr
        assert not (fleet_dir / "out").exists()


def test_corrupt_root_filesystem_says_damaged(fleet_dir: Path) -> None:
    from builder.disk.table import read_table

    root = read_table(fleet_dir / "base.img").partitions[1].start
    with open(fleet_dir / "base.img", "r+b") as f:
        f.seek(root + 1024 + 0x20)  # s_blocks_per_group: zero is impossible
        f.write(b"\0\0\0\0")
    refused(fleet_dir, "base.img", "damaged", "e2fsck")


def test_unknown_timezone_names_the_nearest(fleet_dir: Path, tmp_path: Path) -> None:
    zi = b"# version 2025b\nZ Europe/Berlin 0:53:28 - LMT 1893 Ap\nL Europe/Berlin Arctic/Longyearbyen\n"
    write_root_files(fleet_dir / "base.img", {"/usr/share/zoneinfo/tzdata.zi": zi}, tmp_path)
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(extra="timezone: Europe/Berlinn"))
    refused(fleet_dir, "fleet.yaml: timezone", "nearest: Europe/Berlin")
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(extra="timezone: Arctic/Longyearbyen"))
    assert pifleet("build", "fleet.yaml", cwd=fleet_dir).returncode == 0


def test_unknown_locale_names_the_nearest(fleet_dir: Path, tmp_path: Path) -> None:
    supported = b"de_DE.UTF-8 UTF-8\nde_DE ISO-8859-1\nen_GB.UTF-8 UTF-8\nen_US.UTF-8 UTF-8\n"
    write_root_files(fleet_dir / "base.img", {"/usr/share/i18n/SUPPORTED": supported}, tmp_path)
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(extra="locale: de_DE.UTF8"))
    refused(fleet_dir, "fleet.yaml: locale", "nearest: de_DE.UTF-8")


@pytest.mark.parametrize("typo", ["timezone: Europe/Berlinn", "locale: de_DE.UTF8"])
def test_a_timezone_or_locale_typo_fails_before_the_base_is_copied(
    fleet_dir: Path, tmp_path: Path, typo: str
) -> None:
    """The checks read only, so they run on the base (issue 22, item 4): no multi-GB copy first."""
    zi = b"# version 2025b\nZ Europe/Berlin 0:53:28 - LMT 1893 Ap\n"
    supported = b"de_DE.UTF-8 UTF-8\nen_GB.UTF-8 UTF-8\n"
    files = {"/usr/share/zoneinfo/tzdata.zi": zi, "/usr/share/i18n/SUPPORTED": supported}
    write_root_files(fleet_dir / "base.img", files, tmp_path)
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(extra=typo))
    proc = pifleet("-v", "build", "fleet.yaml", cwd=fleet_dir, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "copying base" not in proc.stderr, proc.stderr[-2000:]
    assert typo.split(":")[0] in proc.stderr.strip().splitlines()[-1]


def test_failed_decompression_leaves_no_cache_folder(fleet_dir: Path) -> None:
    packed = lzma.compress((fleet_dir / "base.img").read_bytes()[: 1 << 20])[:-100]
    (fleet_dir / "base.img.xz").write_bytes(packed)
    digest = hashlib.sha256(packed).hexdigest()
    base = f"base: {{path: base.img.xz, sha256: {digest}}}"
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(base=base))
    cache = fleet_dir / "cache"
    refused(fleet_dir, "base.img.xz", env={"PIFLEET_CACHE": str(cache)})
    assert not (cache / "bases" / digest).exists()


# -- devices_file ---------------------------------------------------------------------


def inventory(fleet_dir: Path, name: str, data: bytes) -> None:
    (fleet_dir / name).write_bytes(data)
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(extra=f"devices_file: {name}"))


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        (b"hostname\n\x89PNG\x00\xff\n", ["devices.csv:2: NUL byte"]),
        (b"hostname\npi-1\xff\n", ["devices.csv:2: not UTF-8"]),
        (b"hostname,labels\npi-1,a=b,extra\n", ["devices.csv:2", "3 fields but the header has 2"]),
        (b"hostname,wifi_country\npi-1,DE\n", ["devices.csv:2", "wifi_country: given without wifi_ssid"]),
    ],
)  # fmt: skip
def test_devices_file_rows(fleet_dir: Path, data: bytes, needles: list[str]) -> None:
    inventory(fleet_dir, "devices.csv", data)
    with pytest.raises(UserError) as info:
        load(fleet_dir / "fleet.yaml")
    for needle in needles:
        assert needle in str(info.value)


def test_devices_file_directory_is_named_as_such(fleet_dir: Path) -> None:
    (fleet_dir / "devices.csv").mkdir()
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(extra="devices_file: devices.csv"))
    with pytest.raises(UserError, match="is a directory"):
        load(fleet_dir / "fleet.yaml")


def test_devices_file_with_a_bom_is_accepted(fleet_dir: Path) -> None:
    inventory(fleet_dir, "devices.csv", "\ufeffhostname,labels\r\npi-1,a=b\r\n".encode())
    devices = load(fleet_dir / "fleet.yaml").devices
    assert [d.hostname for d in devices] == ["pi-1"]
    assert json.dumps(devices[0].labels) == '["a=b"]'
    assert os.path.exists(fleet_dir / "devices.csv")
