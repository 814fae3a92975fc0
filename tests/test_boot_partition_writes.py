"""The agent's writes to the FAT boot partition, and a boot partition the kernel made read-only.

CI met it (tests/test_boot_faults.py, power cuts in verify and then in start): report.json
was rewritten by rename on the FAT, a cut left a directory entry pointing at freed clusters,
the kernel remounted the partition read-only at the next touch, and the third boot joined
but could not take the token off the card, so it never ended. Two fixes, one test each:

- report.json is rewritten in place (firstboot/paths.py `write_in_place`): the same file, the
  same clusters, never a rename, never shorter;
- a read-only boot partition is remounted read-write (firstboot/bootpart.py), both when the
  agent starts and when a removal in `cleanup` meets EROFS. No FAT can be damaged here and
  no loop device exists, so the boot partition is a real tmpfs in a private mount namespace
  (`unshare -rm`), made read-only with a real `mount -o remount,ro`: the kernel's own EROFS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.testserver.server import K3sTestServer
from firstboot import card, paths
from firstboot.redact import Redactor
from tests.agent_helpers import DEFAULT_NODE, FIXTURES, agent_env, make_device, stop_services

NODE_PASSWORD = "0123456789abcdef0123456789abcdef"

# Runs in a private mount namespace: the device's boot partition becomes a tmpfs holding
# what the directory held, read-only from the start ("ro-at-start") or from the moment the
# agent starts K3s ("ro-at-start-of-k3s", through a systemctl that remounts, then runs the
# stand-in). The agent runs; what is left on the boot partition is listed to $2.
NAMESPACE_SCRIPT = r"""
set -e
boot=$1; listing=$2; when=$3; shift 3
cp -a "$boot" "$boot.staged"
mount -t tmpfs -o mode=0755,size=16m pifleet-boot "$boot"
cp -a "$boot.staged/." "$boot/"
rm -rf "$boot.staged"
if [ "$when" = ro-at-start ]; then mount -o remount,ro "$boot"; fi
set +e
"$@"
code=$?
set -e
grep -q " $boot tmpfs ro," /proc/self/mounts && echo "read-only" > "$listing" || : > "$listing"
ls -A "$boot/pifleet" >> "$listing"
exit $code
"""

REMOUNTING_SYSTEMCTL = """#!/bin/sh
# systemctl for this test: the kernel "finds damage" just as K3s starts
if [ "$1" = start ]; then mount -o remount,ro "$PIFLEET_TEST_BOOT"; fi
exec "$PIFLEET_TEST_SYSTEMCTL" "$@"
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[K3sTestServer]:
    with K3sTestServer(state_dir=tmp_path / "server") as srv:
        yield srv


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "device"
    yield root
    stop_services(root)


def run_with_boot_partition(
    root: Path, when: str, tmp_path: Path
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    boot = root / "boot/firmware"
    listing = tmp_path / "left-on-boot"
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(REMOUNTING_SYSTEMCTL)
    systemctl.chmod(0o755)
    env = agent_env(
        {
            "PIFLEET_SYSTEMCTL": str(systemctl),
            "PIFLEET_TEST_SYSTEMCTL": str(FIXTURES / "systemctl-standin"),
            "PIFLEET_TEST_BOOT": str(boot),
        }
        if when == "ro-at-start-of-k3s"
        else None
    )
    script = ["sh", "-c", NAMESPACE_SCRIPT, "sh", str(boot), str(listing), when]
    agent = [sys.executable, "-m", "firstboot", "run", "--root", str(root)]
    proc = subprocess.run(
        ["unshare", "-rm", *script, *agent],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(root),
    )
    return proc, listing.read_text().split() if listing.exists() else ["<no listing>"]


@pytest.mark.parametrize("when", ["ro-at-start", "ro-at-start-of-k3s"])
def test_a_read_only_boot_partition_is_remounted_and_the_secrets_still_go(
    server: K3sTestServer, device: Path, tmp_path: Path, when: str
) -> None:
    token = server.mint_token()
    make_device(device, server, token, boot_token=True, node_password=NODE_PASSWORD)
    proc, left = run_with_boot_partition(device, when, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == f"pifleet-firstboot: joined node={DEFAULT_NODE}"
    remounted = [line for line in proc.stderr.splitlines() if "remounted it read-write" in line]
    assert len(remounted) == 1, proc.stderr[-3000:]
    assert "read-only" not in left, "the boot partition was left read-only"
    assert "token" not in left and "node-password" not in left, f"left on the card: {left}"
    assert server.registered_nodes() == [DEFAULT_NODE]
    assert token.rsplit(":", 1)[-1] not in proc.stdout + proc.stderr


def test_report_is_rewritten_in_place_never_renamed_or_shrunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file keeps its inode (on FAT: its directory entry and clusters) across every write,
    its size is a whole number of slots and never goes down, and every version parses."""
    renames: list[str] = []

    def no_rename(src: str, dst: str) -> None:
        renames.append(dst)
        raise AssertionError("report.json was renamed")

    monkeypatch.setattr(os, "replace", no_rename)
    monkeypatch.setattr(os, "rename", no_rename)
    report = card.CardReport(tmp_path / "pifleet", "edge-1", "https://k3s:6443", Redactor([]))
    report.on_event("state", "network", "waiting for the network")
    first = (tmp_path / "pifleet/report.json").stat()
    sizes = [first.st_size]
    monkeypatch.setattr(card, "journal_tail", lambda lines=0: ["\u00e9" * 290] * card.JOURNAL_LINES)
    report.on_event(
        "failed", "verify", "the server is down"
    )  # 6 bytes a character in JSON: it grows
    monkeypatch.setattr(card, "journal_tail", lambda lines=0: [])
    report.on_event("joined", "cleanup", "edge-1")  # shorter again
    path = tmp_path / "pifleet/report.json"
    sizes += [path.stat().st_size]
    assert renames == []
    assert path.stat().st_ino == first.st_ino
    assert all(size % card.SLOT == 0 for size in sizes), sizes
    assert sizes[1] > sizes[0], "the long journal did not grow the report"
    data = json.loads(path.read_text())
    assert data["state"] == "done" and data["journal"] == []
    again = card.CardReport(tmp_path / "pifleet", "edge-1", "https://k3s:6443", Redactor([]))
    assert again.data["joined"]["node"] == "edge-1", "the story does not go on from the padded file"


def test_write_in_place_pads_a_shorter_text_and_keeps_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    paths.write_in_place(path, b"a long first text\n")
    inode = path.stat().st_ino
    paths.write_in_place(path, b"short\n")
    assert path.read_bytes() == b"short\n" + b" " * 12
    assert path.stat().st_ino == inode
