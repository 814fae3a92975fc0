"""The card tells its story: the agent's redacted report on the boot partition, the support
bundle, and `pifleet diagnose` reading them back rootlessly from a real image."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from builder.testserver.server import K3sTestServer
from firstboot.card import CardReport
from firstboot.collect import write_bundle
from firstboot.paths import Root
from firstboot.redact import Redactor
from firstboot.report import Reporter
from tests.agent_helpers import make_device, run_agent, stop_services
from tests.conftest import pifleet
from tests.image_edit import put_report
from tests.secret_forms import HASH, SECRETS, carriers

KNOWN = ["shortpassword123", "node-password-5f3a9c", "wifi-psk-Tr0ub4dor&3"]
# What the bundle must learn by itself from the device (its token file, network-config...).


@pytest.mark.parametrize("secret", list(SECRETS), ids=list(range(len(SECRETS))))
def test_redactor_removes_every_secret_form(secret: str) -> None:
    redactor = Redactor(KNOWN)
    for line in carriers(secret):
        assert SECRETS[secret] not in redactor.clean(line), line


def test_redactor_keeps_what_helps() -> None:
    clean = Redactor().clean(f"token K10{HASH}::server:pw rejected by https://k3s:6443 (401)")
    assert f"K10{HASH}::server:<redacted>" in clean and "(401)" in clean


def journal_with_secrets(tmp_path: Path) -> dict[str, str]:
    """A journalctl stand-in whose output carries every secret (the agent's journal)."""
    script = tmp_path / "journalctl"
    lines = [c for s in SECRETS for c in carriers(s)]
    (tmp_path / "journal.txt").write_text("\n".join(lines) + "\n")
    script.write_text(f"#!/bin/sh\ncat {tmp_path / 'journal.txt'}\n")
    script.chmod(0o755)
    return {"PIFLEET_JOURNALCTL": str(script)}


def test_report_and_bundle_hold_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in journal_with_secrets(tmp_path).items():
        monkeypatch.setenv(key, value)
    device = tmp_path / "device"
    boot = device / "boot/firmware/pifleet"
    boot.mkdir(parents=True)
    (boot / "node-password").write_text("node-password-5f3a9c\n")
    (device / "etc/pifleet").mkdir(parents=True)
    (device / "etc/pifleet/token").write_text("shortpassword123\n")
    (device / "boot/firmware/network-config").write_text(
        "network:\n  version: 2\n  wifis:\n    wlan0:\n      access-points:\n"
        '        "site":\n          password: "wifi-psk-Tr0ub4dor&3"\n'
    )
    reporter = Reporter(io.StringIO())
    reporter.listeners.append(CardReport(boot, "edge-042", "https://k3s:6443", Redactor(KNOWN)))
    for secret in SECRETS:
        reporter.progress("verify", f"waiting for the server: {secret}")
        reporter.failed("verify", f"the server rejected the token {secret} (401 Unauthorized)")
    report = (boot / "report.json").read_text()
    assert json.loads(report)["last_failure"]["count"] == 1  # each reason differs
    bundle = write_bundle(Root(device), tmp_path / "bundle.tar.gz")
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
        texts = [tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()]  # type: ignore[union-attr]
    assert "pifleet-collect/boot/firmware/pifleet/report.json" in names
    assert "pifleet-collect/journal.txt" in names
    for hidden in SECRETS.values():
        assert hidden not in report
        for text in texts:
            assert hidden not in text


def test_repeated_failure_counts_and_keeps_first_and_last(tmp_path: Path) -> None:
    reporter = Reporter(io.StringIO())
    reporter.listeners.append(CardReport(tmp_path, "edge-042", "https://k3s:6443", Redactor()))
    reporter.state("verify", "checking the server")
    for _ in range(14):
        reporter.failed("verify", "the server rejected the token (401 Unauthorized)")
    report = json.loads((tmp_path / "report.json").read_text())
    failure = report["last_failure"]
    assert (failure["count"], failure["state"], report["state"]) == (14, "verify", "verify")
    assert failure["first"] <= failure["last"]


def test_diagnose_tells_the_failure_and_its_remedy(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    image = make_image("card.img")
    before = pifleet("diagnose", str(image), cwd=tmp_path)
    assert before.returncode == 1 and "agent never ran" in before.stdout
    put_report(image, {
        "version": 1, "node": "edge-042", "server": "https://k3s.example.net:6443",
        "state": "verify", "timeline": [{"state": "load", "at": "2026-11-25T09:13:40Z"},
                                        {"state": "verify", "at": "2026-11-25T09:14:03Z"}],
        "last_failure": {"state": "verify", "count": 14, "first": "2026-11-25T09:14:05Z",
                         "last": "2026-11-25T11:02:00Z",
                         "reason": "the server rejected the token (401 Unauthorized)"},
        "joined": None, "journal": ["k3s line one"],
    })  # fmt: skip
    done = pifleet("diagnose", str(image), "--journal", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "edge-042: reached verify at 2026-11-25 09:14:03"
    assert "401 Unauthorized" in lines[1] and "14 times since 2026-11-25 09:14:05" in lines[1]
    assert "last at 2026-11-25 11:02:00" in lines[1]
    assert lines[2].startswith("  what to do: the server does not accept this token")
    assert "k3s line one" in done.stdout


def test_diagnose_of_a_joined_device_after_a_real_agent_run(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    """The agent joins the test server; its report, put on a card, reads as joined."""
    with K3sTestServer(state_dir=tmp_path / "k3s") as server:
        root = make_device(tmp_path / "device", server, server.mint_token(), hostname="edge-042")
        try:
            run = run_agent(root)
        finally:
            stop_services(root)
    assert run.returncode == 0, run.stderr
    report = json.loads((root / "boot/firmware/pifleet/report.json").read_text())
    assert report["joined"]["node"] == "edge-042" and report["state"] == "done"
    assert server.password not in json.dumps(report)
    image = make_image("card.img")
    put_report(image, report)
    done = pifleet("diagnose", str(image), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("edge-042: joined as edge-042 at ")
    assert "server CA pinned for" in done.stdout


def test_diagnose_bad_input_is_one_line(tmp_path: Path) -> None:
    missing = pifleet("diagnose", str(tmp_path / "nope.img"), cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(4096))
    bad = pifleet("diagnose", str(junk), cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "Traceback" not in bad.stderr
