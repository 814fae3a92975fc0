"""Pieces of the QEMU half that need no QEMU: the JUnit report, mmdebstrap errors."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

from builder.qemu.boottest import BootResult, write_junit
from builder.qemu.debian import first_error


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
