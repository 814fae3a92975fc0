"""Pieces of the QEMU half that need no QEMU: console following, the JUnit report, mmdebstrap
errors (the index-mismatch one also from a real mmdebstrap against a local mirror)."""

from __future__ import annotations

import email.utils
import hashlib
import os
from pathlib import Path
from xml.etree import ElementTree

import pytest

from builder.bases.bootstrap import first_error, index_mismatch
from builder.qemu.boottest import write_junit
from builder.qemu.console import BootResult, follow, verdict
from builder.qemu.vm import ConsoleLine
from tests.conftest import pifleet
from tests.http_fixture import AssetServer


def test_console_control_characters_still_give_valid_xml(tmp_path: Path) -> None:
    console = ["\x1b[0;32m  OK  \x1b[0m] Started", "bell \x07 and NUL \x00", "plain line"]
    result = BootResult(failure="no join within 5 s", console=console, seconds=5.0)
    result.milestones.append(("kernel started", 1.5))
    report = tmp_path / "junit.xml"
    write_junit(report, Path("edge.img"), result)
    suite = ElementTree.parse(report).getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("1", "1")
    case = suite.find("testcase")
    assert case is not None and case.get("name") == "boot edge.img"
    failure = case.find("failure")
    assert failure is not None and failure.get("message") == "no join within 5 s"
    assert "plain line" in (failure.text or "")
    out = case.findtext("system-out") or ""
    assert "Started" in out and "\x07" not in out and "\x00" not in out
    assert [(p.get("name"), p.get("value")) for p in suite.iter("property")] == [
        ("kernel started", "1.5")
    ]


def test_mmdebstrap_failure_names_the_cause() -> None:
    output = (
        "I: running apt-get update...\n"
        "E: Failed to fetch http://deb.debian.org/debian/dists/trixie/main/binary-armhf/Packages.xz"
        "  File has unexpected size (9246492 != 9246996). Mirror sync in progress?\n"
        "   Hashes of expected file:\n"
        "E: Some index files failed to download.\n"
        "E: mmdebstrap failed to run\n"
    )
    assert first_error(output).startswith("Failed to fetch http://deb.debian.org/")
    assert first_error("W: something\nlast words\n") == "last words"
    assert first_error("") == "no output"
    assert (
        index_mismatch("E: Unable to locate package nosuch\nE: mmdebstrap failed to run\n") is None
    )


# apt 2.6's words (the first from the Debian mirror's trixie armhf index on 2026-11-25).
SIZE_MISMATCH = """\
E: Failed to fetch http://deb.debian.org/debian/dists/trixie/main/binary-armhf/Packages.xz  \
File has unexpected size (9246492 != 9246996). Mirror sync in progress? [IP: 151.101.2.132 80]
   Hashes of expected file:
    - Filesize:9246996 [weak]
    - SHA256:4f0c3d5c
   Release file created at: Fri, 21 Nov 2026 08:21:04 +0000
E: Some index files failed to download. They have been ignored, or old ones used instead.
"""
HASH_MISMATCH = """\
E: Failed to fetch http://m.example/debian/dists/sid/main/binary-armhf/Packages.xz  Hash Sum mismatch
   Hashes of expected file:
    - Filesize:9400000 [weak]
    - SHA256:d9298a10
   Hashes of received file:
    - SHA256:51064500
    - Filesize:9399000 [weak]
   Last modification reported: Wed, 25 Nov 2026 13:55:19 +0000
E: Some index files failed to download. They have been ignored, or old ones used instead.
"""


def test_an_index_that_does_not_match_its_release_file_is_named_with_its_sizes() -> None:
    assert index_mismatch(SIZE_MISMATCH) == (
        "the mirror's index http://deb.debian.org/debian/dists/trixie/main/binary-armhf/Packages.xz"
        " does not match its Release file (9246492 bytes served, 9246996 listed; mirror sync in"
        " progress?): try again later, or another --suite or --mirror"
    )
    hashed = index_mismatch(HASH_MISMATCH)
    assert hashed is not None
    assert "dists/sid/main/binary-armhf/Packages.xz does not match its Release file" in hashed
    assert "(hash sum mismatch, 9399000 bytes served, 9400000 listed;" in hashed
    no_sizes = HASH_MISMATCH.replace("    - Filesize:9399000 [weak]\n", "")
    assert "(hash sum mismatch; mirror sync" in (index_mismatch(no_sizes) or "")


def fake_repo(packages: bytes, listed: bytes, listed_size: int) -> dict[str, bytes]:
    """A one-index Debian repository whose unsigned Release lists `listed` (its sha256) and
    `listed_size` for main/binary-armhf/Packages, which serves `packages`."""
    digest = hashlib.sha256(listed).hexdigest()
    release = (
        "Origin: pifleet-test\nSuite: bookworm\nCodename: bookworm\n"
        f"Date: {email.utils.formatdate(usegmt=True)}\nArchitectures: armhf\nComponents: main\n"
        f"SHA256:\n {digest} {listed_size} main/binary-armhf/Packages\n"
    )
    return {
        "/debian/dists/bookworm/Release": release.encode(),
        "/debian/dists/bookworm/main/binary-armhf/Packages": packages,
    }


INDEX = b"Package: hello\nVersion: 1.0\nArchitecture: armhf\n\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="pifleet base needs root (mmdebstrap --mode=root)")
@pytest.mark.parametrize(
    ("listed", "listed_size", "words"),
    [
        (INDEX, len(INDEX) + 504, f"({len(INDEX)} bytes served, {len(INDEX) + 504} listed;"),
        (b"another index", len(INDEX), f"(hash sum mismatch, {len(INDEX)} bytes served, {len(INDEX)} listed;"),
    ],
    ids=["size", "hash"],
)  # fmt: skip
def test_pifleet_base_names_a_mismatched_index_in_one_line(
    tmp_path: Path, listed: bytes, listed_size: int, words: str
) -> None:
    """A real mmdebstrap (and apt) against a real mirror on 127.0.0.1 serving a bad index."""
    with AssetServer(files=fake_repo(INDEX, listed, listed_size)) as mirror:
        line = f"deb [trusted=yes] {mirror.url}/debian bookworm main"
        proc = pifleet(
            "-q", "base", "--arch", "armhf", "--suite", "bookworm", "--mirror", line,
            cwd=tmp_path, env={"PIFLEET_CACHE": str(tmp_path / "cache")}, timeout=120,
        )  # fmt: skip
        index = f"{mirror.url}/debian/dists/bookworm/main/binary-armhf/Packages"
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr  # -q: progress off, the error alone
    assert proc.stderr.startswith(
        f"pifleet: error: Debian bookworm armhf: the mirror's index {index} does not match its"
        " Release file "
    ), proc.stderr
    assert words in proc.stderr and "another --suite or --mirror" in proc.stderr, proc.stderr
    assert proc.stdout == ""
    assert list((tmp_path / "cache/base").iterdir()) == []  # nothing left in the cache


# Lines as a real armhf boot printed them: the agent joined before cloud-init's final stage.
ARMHF_BOOT = [
    "[    0.000000] Booting Linux on physical CPU 0x0",
    "[   45.301519] cloud-init[310]: Cloud-init v. 25.1.4 running 'init-local' at Wed, 25 Nov "
    "2026 10:05:07 +0000. Up 43.87 seconds.",
    "[   61.957646] python3[400]: pifleet-firstboot: state=start starting K3s",
    "edge-007 login: [  OK  ] Finished sshd-keygen.service - Generate sshd host keys.",
    "[   78.673329] python3[400]: pifleet-firstboot: joined node=edge-007",
    "[   79.733577] cloud-init[310]: Cloud-init v. 25.1.4 running 'modules:final' at Wed, 25 "
    "Nov 2026 10:05:42 +0000. Up 78.64 seconds.",
    "[   80.960698] cloud-init[310]: Cloud-init v. 25.1.4 finished at Wed, 25 Nov 2026 10:05:45 "
    "+0000. Datasource DataSourceNoCloud [seed=ds_config_seedfrom,file:///boot/firmware].",
    "[   81.0] a line after the boot passed, never read",
]


def replay(lines: list[str]) -> BootResult:
    result = BootResult()
    follow((ConsoleLine(float(i), text) for i, text in enumerate(lines)), result)
    return result


def test_a_boot_passes_once_joined_and_cloud_init_finished_in_either_order() -> None:
    result = replay(ARMHF_BOOT)
    assert (result.joined, result.node, result.login_hostname) == (True, "edge-007", "edge-007")
    assert result.cloud_init is not None and "finished at" in result.cloud_init
    assert verdict(result, 900, running=True) is None
    assert result.console[-1].startswith("[   80.9")  # stopped reading once both were seen
    names = [name for name, _ in result.milestones]
    assert names == [
        "kernel started", "cloud-init started", "agent: start", "joined", "cloud-init finished"
    ]  # fmt: skip


def test_joined_without_cloud_init_finishing_or_a_failed_stage_does_not_pass() -> None:
    joined_only = replay(ARMHF_BOOT[:5])
    assert joined_only.joined
    assert verdict(joined_only, 900, running=True) == (
        "timed out after 900 s waiting for cloud-init to finish"
    )
    assert verdict(replay(ARMHF_BOOT[:3]), 900, running=False) == (
        "QEMU exited while waiting for the node to join"
    )
    failed_stage = "[FAILED] Failed to start cloud-config.service - Cloud-init: Config Stage."
    broken = replay([*ARMHF_BOOT[:3], failed_stage, *ARMHF_BOOT[3:]])
    assert broken.failure == f"cloud-init failed: {failed_stage}"
    assert verdict(broken, 900, running=True) == f"cloud-init failed: {failed_stage}"
    # decided at the failed stage: no waiting for a join or for the timeout after it
    assert broken.console[-1] == failed_stage and not broken.joined


def test_a_timeout_names_the_pi_unit_that_waits_for_ever() -> None:
    """userconf-pi's userconfig.service waits on tty8 for a user when no seed set one
    (docs/notes/pi-hardware-units.md): the verdict says so rather than only "timed out"."""
    lines = [
        *ARMHF_BOOT[:3],
        "         Starting userconfig.service - Create a user...",
        "         Starting ssh.service - OpenBSD Secure Shell server...",
        "[  OK  ] Started ssh.service - OpenBSD Secure Shell server.",
    ]
    said = verdict(replay(lines), 900, running=True)
    assert said == (
        "timed out after 900 s waiting for the node to join (userconfig.service is still "
        "waiting for a user to be set on tty8 (userconf-pi: no seed renamed the default user))"
    )
    done = replay([*lines, "[  OK  ] Finished userconfig.service - Create a user."])
    assert verdict(done, 900, running=True) == "timed out after 900 s waiting for the node to join"


# Lines as a systemd-format boot prints them: firstrun.sh's reboot ends the first power-on.
FIRSTRUN_BOOT = [
    "[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x410fd083]",
    "[   31.2] reboot: Restarting system",
    "a line after the reboot, never read",
]
SECOND_BOOT = [
    "[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x410fd083]",
    "[   52.1] python3[400]: pifleet-firstboot: state=start starting K3s",
    "[   60.3] python3[400]: pifleet-firstboot: joined node=edge-007",
]


def test_a_guest_reboot_ends_that_boot_and_an_image_without_cloud_init_passes_once_joined() -> None:
    result = BootResult(cloud_init_expected=False)
    follow((ConsoleLine(float(i), t) for i, t in enumerate(FIRSTRUN_BOOT)), result)
    assert result.reboots == 1 and result.console[-1].endswith("reboot: Restarting system")
    assert verdict(result, 900, running=False) == "QEMU exited while waiting for the node to join"
    follow((ConsoleLine(10.0 + i, t) for i, t in enumerate(SECOND_BOOT)), result)
    assert verdict(result, 900, running=True) is None
    names = [name for name, _ in result.milestones]
    assert names == ["kernel started", "reboot 1", "agent: start", "joined"]  # each once
    expecting = BootResult()  # an image with cloud-init: joined alone does not pass
    follow((ConsoleLine(float(i), t) for i, t in enumerate(SECOND_BOOT)), expecting)
    assert verdict(expecting, 900, running=True) == (
        "timed out after 900 s waiting for cloud-init to finish"
    )


def test_the_cloud_init_base_keeps_its_cache_key() -> None:
    """CI caches the bases by these keys: `--format` leaves the cloud-init ones as they were
    (a RECIPE_VERSION bump changes them on purpose: update them with it)."""
    from builder.bases.debian import Recipe

    assert Recipe("arm64").key() == Recipe("arm64", format="cloudinit").key() == "cc777f2cda139f99"
    assert Recipe("armhf", "bookworm").key() == "00633d0b1b992d19"
    systemd = Recipe("arm64", "bookworm", format="systemd")
    assert systemd.key() != Recipe("arm64", "bookworm").key()
    assert systemd.name == "pifleet-debian-bookworm-arm64-systemd"


def test_an_agent_failure_ends_the_boot_at_once() -> None:
    failed = "[ 42.4] python3[423]: pifleet-firstboot: failed state=verify reason=the server rejected the token (401 Unauthorized)"
    result = replay([*ARMHF_BOOT[:3], failed, *ARMHF_BOOT[3:]])
    assert (
        result.failure == "agent failed in verify: the server rejected the token (401 Unauthorized)"
    )
    assert not result.joined and result.console[-1] == failed
