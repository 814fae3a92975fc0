"""Pieces of the QEMU half that need no QEMU: console following, the JUnit report, mmdebstrap errors."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

from builder.qemu.boottest import BootResult, follow, verdict, write_junit
from builder.qemu.debian import first_error
from builder.qemu.vm import ConsoleLine


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
    assert broken.joined and broken.cloud_init is not None
    assert verdict(broken, 900, running=True) == f"cloud-init failed: {failed_stage}"


def test_an_agent_failure_ends_the_boot_at_once() -> None:
    failed = "[ 42.4] python3[423]: pifleet-firstboot: failed state=verify reason=the server rejected the token (401 Unauthorized)"
    result = replay([*ARMHF_BOOT[:3], failed, *ARMHF_BOOT[3:]])
    assert (
        result.failure == "agent failed in verify: the server rejected the token (401 Unauthorized)"
    )
    assert not result.joined and result.console[-1] == failed
