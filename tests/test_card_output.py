"""What a card says is data: `pifleet diagnose` escapes every control character a card carries
and runs the redactor over everything it prints (text, `--journal`, `--json`), and refuses a
report of the wrong shape in one line (issue 21, items 4 and 8)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from builder.disk.image import Image
from tests.conftest import pifleet
from tests.image_edit import put_raw, put_report, write_root_files
from tests.secret_forms import SECRETS, carriers

# What a hostile (or broken) card could carry, each to a terminal's harm.
ATTACKS = {
    "retitle": "\x1b]0;pwned\x07",
    "clear": "\x1b[2J\x1b[H",
    "overwrite": "\r\x1b[2Kedge-042: joined as edge-042",
    "clipboard": "\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07",
    "c1-csi": "\x9b2J",
    "backspace": "ok\x08\x08\x08FAILED",
    "delete": "a\x7fb",
    "bidi": "edge\u202e100-egde",
    "separator": "one\u2028two",
    "newline": "reason\nedge-042: joined as edge-042 at 2026-01-01 00:00:00",
    "surrogate": "\ud800",
}
# Nothing the terminal acts on: C0 but newline, DEL, C1, bidi controls, separators, surrogates.
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def hostile_report(payload: str) -> dict[str, Any]:
    """A report with `payload` in every string the agent writes, and in a key of its own."""
    return {
        "version": 1, "node": f"edge-042{payload}", "server": f"https://k3s{payload}:6443",
        "state": f"verify{payload}", "detail": payload,
        "timeline": [{"state": f"verify{payload}", "at": f"2026-11-25T09:14:03Z{payload}"}],
        "last_failure": {"state": f"verify{payload}", "count": 3, "first": payload,
                         "last": payload, "reason": f"refused{payload}"},
        "joined": None, "journal": [f"k3s{payload}", payload],
        f"extra{payload}": {"nested": [payload]},
    }  # fmt: skip


def run_all(image: Path, tmp_path: Path) -> list[str]:
    """stdout and stderr of diagnose, diagnose --journal and diagnose --json, as bytes read."""
    outs = []
    for flags in ((), ("--journal",), ("--json",)):
        done = pifleet("diagnose", str(image), *flags, cwd=tmp_path)
        assert done.returncode == 1, done.stderr  # not joined, and no internal error
        assert "error" not in done.stderr, done.stderr
        outs.append(done.stdout + done.stderr)
    return outs


@pytest.mark.parametrize("name", list(ATTACKS))
def test_no_control_character_from_a_card_reaches_the_terminal(
    name: str, tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    image = make_image("card.img")
    put_report(image, hostile_report(ATTACKS[name]))
    text, journal, as_json = run_all(image, tmp_path)
    for out in (text, journal, as_json):
        assert not UNSAFE.search(out), (name, out)
    assert "refused" in text and "k3s" in journal.split("journal (last lines")[1]
    parsed = json.loads(as_json)  # still JSON, and still says what the card said
    assert parsed["node"] == f"edge-042{ATTACKS[name]}"
    if name == "retitle":
        assert "\\x1b]0;pwned\\x07" in text  # shown, visibly, as what it is
    if name == "newline":  # one value is one line: no fake line of its own
        assert not any(line.startswith("edge-042: joined") for line in journal.splitlines())


NETWORK = (
    "network:\n  version: 2\n  wifis:\n    wlan0:\n      access-points:\n"
    '        "site":\n          password: "wifi-psk-Tr0ub4dor&3"\n'
)


def test_no_secret_from_a_card_is_printed(tmp_path: Path, make_image: Callable[..., Path]) -> None:
    """A report not written by the agent's redactor (an older agent, a hand-made card): every
    secret form in every place is masked in the text, the journal and --json, and so is every
    exact secret the card holds (token, node password, Wi-Fi key), on either partition."""
    lines = [c for s in SECRETS for c in carriers(s)]
    report = hostile_report("")
    report.update(journal=lines, detail=" ".join(lines), extra={"log": lines, "one": lines[0]})
    report["last_failure"]["reason"] = " | ".join(lines)
    report[lines[1]] = "a key holding a token"
    image = make_image("card.img")
    put_report(image, report)
    opened = Image.open(image)
    opened.boot.stage("/pifleet/token", b"shortpassword123\n")
    opened.boot.flush()
    write_root_files(image, {
        "/etc/rancher/node/password": b"node-password-5f3a9c\n",
        "/var/lib/cloud/seed/nocloud/network-config": NETWORK.encode(),
    }, tmp_path)  # fmt: skip
    outs = run_all(image, tmp_path)
    assert "<redacted>" in outs[1] and "<redacted>" in outs[2]
    for hidden in SECRETS.values():
        for out in outs:
            assert hidden not in out


DEEP = "[" * 5000 + "]" * 5000
DAMAGED: dict[str, tuple[str, str]] = {
    # name: (report.json text, what the one line names)
    "timeline a string": ('{"timeline": "verify"}', "timeline is a string, not a list"),
    "timeline of strings": ('{"timeline": ["verify"]}', "timeline[0] is a string, not an object"),
    "timeline entry null": ('{"timeline": [null]}', "timeline[0] is null"),
    "joined a string": ('{"joined": "yes"}', "joined is a string, not an object"),
    "joined.at a number": ('{"joined": {"node": "a", "at": 5}}', "joined.at is a whole number"),
    "failure a list": ('{"last_failure": []}', "last_failure is a list, not an object"),
    "count a string": ('{"last_failure": {"count": "x"}}', "last_failure.count is a string"),
    "count NaN": ('{"last_failure": {"count": NaN}}', "last_failure.count is a fractional"),
    "count true": ('{"last_failure": {"count": true}}', "last_failure.count is true/false"),
    "reason an object": ('{"last_failure": {"reason": {}}}', "last_failure.reason is an object"),
    "journal numbers": ('{"journal": [1, 2]}', "journal[0] is a whole number, not a string"),
    "journal a string": ('{"journal": "line"}', "journal is a string, not a list"),
    "node a list": ('{"node": ["a"]}', "node is a list, not a string"),
    "state a number": ('{"state": 3}', "state is a whole number, not a string"),
    "detail a bool": ('{"detail": false}', "detail is true/false, not a string"),
    "version a string": ('{"version": "1"}', "version is a string, not a whole number"),
    "nested 5000 deep": ('{"extra": ' + DEEP + "}", "nested more than"),
    "nested 30 deep": ('{"extra": ' + "[" * 30 + "]" * 30 + "}", "nested more than 16"),
    "deep top level": (DEEP, "nested more than"),
    "a list": ("[1, 2]", "not a JSON object"),
    "a string": ('"report"', "not a JSON object"),
    "not JSON": ("{'node': 1}", "not JSON"),
    "not UTF-8": ('{"node": "\xff\xfe"}', "not JSON"),
}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_damaged_report_is_one_line_exit_2(
    name: str, tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    text, needle = DAMAGED[name]
    image = make_image("card.img")
    data = text.encode("latin-1") if name == "not UTF-8" else text.encode()
    put_raw(image, data)
    for flags in ((), ("--json",)):
        done = pifleet("diagnose", str(image), *flags, cwd=tmp_path)
        assert done.returncode == 2, (name, done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1 and "internal error" not in done.stderr
        assert "report.json is damaged" in done.stderr and needle in done.stderr, done.stderr
        assert done.stdout == ""


def test_unknown_keys_and_nulls_are_accepted(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    """The check refuses wrong types, not what a newer agent may add or leave empty."""
    image = make_image("card.img")
    put_report(image, {"version": 2, "node": None, "state": None, "timeline": [],
                       "last_failure": {"state": "verify", "reason": None, "count": None},
                       "new_key": {"a": [1, 2.5, None, True]}})  # fmt: skip
    done = pifleet("diagnose", str(image), "--journal", cwd=tmp_path)
    assert done.returncode == 1 and done.stderr == "", done.stderr
    assert done.stdout.startswith("?: state ?\n")
