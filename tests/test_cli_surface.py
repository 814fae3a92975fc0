"""The whole argument surface of `pifleet`, walked from its own argparse tree: every command,
every option. A missing argument, an unknown option, an option without its value and a value
its type or choices refuse each give exactly one line on stderr, naming the command and where
its help is, exit 2, no traceback (issue 21, item 8). A new command or option is covered as
soon as it is registered.

Parsing fails before any command runs, so the cases run `builder.cli.main` in this process
(about 600 of them in a second); one subprocess case shows the real CLI does the same."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from builder import cli
from tests.conftest import REPO, pifleet

# A value each check in cli.py accepts, for required options that have one.
GOOD = {"--server": "https://127.0.0.1:6443", "server": "https://127.0.0.1:6443"}
# A value each check refuses, by the check's name; any other type or choices: BAD.
BAD = "not-a-value\nsecond line"
BAD_FOR = {"output_file": "/"}


@pytest.fixture(autouse=True)
def no_command_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A case that parses runs no command here: it fails instead."""

    def refuse(spec: str) -> object:
        raise AssertionError(f"the arguments parsed and {spec} would run")

    monkeypatch.setattr(cli, "_handler", refuse)


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]  # ("token", "pin")
    parser: argparse.ArgumentParser

    @property
    def prog(self) -> str:
        return " ".join(("pifleet", *self.words))

    def required(self) -> list[str]:
        """The shortest argument list this command parses."""
        args: list[str] = []
        for action in self.parser._actions:
            if not action.option_strings:
                args.append(GOOD.get(action.dest, "x"))
            elif action.required:
                args += [action.option_strings[-1], GOOD.get(action.option_strings[-1], "x")]
        return args

    def options(self) -> Iterator[argparse.Action]:
        for action in self.parser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                yield action


def commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> Iterator[Command]:
    """Every command that runs something (leaves of the tree), with its parser."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield Command(words, parser)
        return
    for name, child in subs[0].choices.items():
        yield from commands(child, (*words, name))


COMMANDS = list(commands(cli._parser()))


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], prog: str) -> str:
    """Run the CLI in-process: exit 2 and one line `<prog>: error: ... (see `<prog> --help`)`."""
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    out, err = capsys.readouterr()
    assert done.value.code == 2, f"exit 2 for bad input: {argv} {err}"
    lines = err.splitlines()
    assert len(lines) == 1, f"one line on stderr: {argv} {err}"
    assert out == "", f"nothing on stdout: {argv} {out}"
    assert lines[0].startswith(f"{prog}: error: "), f"the line starts with the prog: {lines[0]}"
    assert lines[0].endswith(f"(see `{prog} --help`)"), f"the line points at --help: {lines[0]}"
    assert "Traceback" not in err, f"no traceback: {argv}"
    assert "usage:" not in err, f"no usage block: {argv}"
    return lines[0]


def test_the_tree_is_walked() -> None:
    """The walk finds every command (a registration the walk misses covers nothing)."""
    found = {c.prog for c in COMMANDS}
    for name in ("build", "token pin", "token check", "cluster init", "cluster show", "status",
                 "test-server", "boot-test", "images", "diagnose", "personalize", "flash"):  # fmt: skip
        assert f"pifleet {name}" in found, found
    assert sum(len(list(c.options())) for c in COMMANDS) > 60


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.prog)
def test_unknown_option_missing_argument_and_stray_word(
    capsys: pytest.CaptureFixture[str], command: Command
) -> None:
    required = command.required()
    line = refused(capsys, [*command.words, *required, "--no-such-option"], command.prog)
    assert "unrecognized arguments: --no-such-option" in line
    if required:
        line = refused(capsys, list(command.words), command.prog)
        assert "the following arguments are required" in line
    else:
        line = refused(capsys, [*command.words, "stray-word"], command.prog)
        assert "unrecognized arguments: stray-word" in line


def option_cases() -> Iterator[tuple[Command, argparse.Action]]:
    for command in COMMANDS:
        for action in command.options():
            yield command, action


@pytest.mark.parametrize(
    ("command", "action"),
    list(option_cases()),
    ids=[f"{c.prog} {a.option_strings[-1]}" for c, a in option_cases()],
)
def test_every_option_refuses_bad_values_in_one_line(
    capsys: pytest.CaptureFixture[str], command: Command, action: argparse.Action
) -> None:
    """An option without its value; a value outside its choices; a value its type refuses."""
    option, required = action.option_strings[-1], command.required()
    if action.nargs == 0:  # a flag: it takes no value
        line = refused(capsys, [*command.words, *required, f"{option}=1"], command.prog)
        assert "ignored explicit argument" in line
        return
    line = refused(capsys, [*command.words, *required, option], command.prog)
    assert f"argument {'/'.join(action.option_strings)}: expected one argument" in line
    if action.choices is not None or action.type is not None:
        bad = BAD_FOR.get(getattr(action.type, "__name__", ""), BAD)
        line = refused(capsys, [*command.words, option, bad, *required], command.prog)
        assert f"argument {'/'.join(action.option_strings)}: " in line
        assert bad.split("\n")[0] in line


def test_positional_values_are_checked_where_they_have_a_type(
    capsys: pytest.CaptureFixture[str],
) -> None:
    checked = []
    for command in COMMANDS:
        for action in command.parser._actions:
            if action.option_strings or action.type is None:
                continue
            args = [a if a != GOOD.get(action.dest) else "ftp://x" for a in command.required()]
            line = refused(capsys, [*command.words, *args], command.prog)
            assert f"argument {action.dest}: " in line
            checked.append(f"{command.prog} {action.dest}")
    assert "pifleet token pin server" in checked


def test_the_real_cli_prints_one_line_too(tmp_path: object) -> None:
    proc = pifleet("build", cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "pifleet build: error: the following arguments are required: config "
        "(see `pifleet build --help`)"
    ]
    proc = pifleet("token", "pin", "https://h", "--token-file", "t", "-o", "o", "-x", cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "pifleet token pin: error: unrecognized arguments: -x (see `pifleet token pin --help`)"
    ]
