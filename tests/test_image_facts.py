"""The image's facts are read once: debugfs runs are batched and their answers kept until the
next write, the OS is detected in the base only, and the K3s binary is streamed once.

Every debugfs run is counted through a PATH shim that records its arguments and its command
file, then runs the real debugfs (as tests/test_bad_input.py watches the tools' environment).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.disk.entries import File, Symlink
from builder.disk.ext4 import KEPT_FILE_LIMIT
from builder.disk.image import Image
from builder.util.errors import BuildError
from tests.conftest import TEST_TOKEN, fleet_yaml, pifleet
from tests.layouts import TRIXIE, elf_for, make_pi_image

EPOCH = 1_700_000_000
MOST_PER_GOLDEN_BUILD = 15  # issue 22: 137 before batching


@dataclass(frozen=True)
class Run:
    argv: str  # debugfs's arguments, one line
    script: str  # the command file's content ("" for -R)


class Shim:
    """A folder to put first on PATH whose `debugfs` records each run in `records`."""

    def __init__(self, folder: Path) -> None:
        self.bin, self.records = folder / "shim-bin", folder / "shim-records"
        self.bin.mkdir()
        self.records.mkdir()
        real = shutil.which("debugfs") or shutil.which("debugfs", path="/usr/sbin:/sbin")
        assert real is not None
        record = f'"{self.records}/$$"'
        body = (
            f"#!/bin/sh\nprintf '%s\\n' \"$*\" > {record}\n"
            f'for a; do case "$a" in *.cmd) cat "$a" >> {record};; esac; done\n'
            f'exec "{real}" "$@"\n'
        )
        (self.bin / "debugfs").write_text(body)
        (self.bin / "debugfs").chmod(0o755)

    @property
    def path(self) -> str:
        return f"{self.bin}:{os.environ['PATH']}"

    def runs(self) -> list[Run]:
        found = []
        for record in sorted(self.records.iterdir(), key=lambda p: p.stat().st_mtime_ns):
            argv, _, script = record.read_text().partition("\n")
            found.append(Run(argv, script))
        return found


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> list[Run]:
    """The debugfs runs of one `pifleet build` of the test fleet (Trixie arm64)."""
    folder = tmp_path_factory.mktemp("golden")
    make_pi_image(folder / "base.img", TRIXIE, "arm64")
    (folder / "token").write_text(TEST_TOKEN + "\n")
    (folder / "token").chmod(0o600)
    (folder / "fleet.yaml").write_text(fleet_yaml())
    shim = Shim(folder)
    proc = pifleet("build", "fleet.yaml", cwd=folder, env={"PATH": shim.path}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return shim.runs()


def test_a_golden_build_runs_at_most_15_debugfs(golden: list[Run]) -> None:
    assert 0 < len(golden) <= MOST_PER_GOLDEN_BUILD, [r.argv for r in golden]


def test_the_k3s_binary_is_streamed_once_per_build(golden: list[Run]) -> None:
    streams = [r for r in golden if '/usr/local/bin/k3s"' in r.argv or "cat " in r.script]
    assert len(streams) == 1, [r.argv for r in streams]


def test_the_os_is_detected_in_the_base_only(golden: list[Run]) -> None:
    """Only detection asks for /etc/rpi-issue: lint and inspect are handed the base's flavor."""
    asked = [r.argv.rsplit(" ", 1)[-1] for r in golden if '"/etc/rpi-issue"' in r.script]
    assert [Path(spec.split("?")[0]).name for spec in asked] == ["base.img"]


@pytest.fixture
def shim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Shim:
    watch = Shim(tmp_path)
    monkeypatch.setenv("PATH", watch.path)
    return watch


def test_a_link_costs_one_debugfs_run_and_a_kept_answer_none(
    make_image: Callable[..., Path], shim: Shim
) -> None:
    """/etc/os-release links to ../usr/lib/os-release: one run per path to stat and dump."""
    image = Image.open(make_image())
    assert image.root.read("/etc/os-release") == TRIXIE.os_release.encode()
    assert len(shim.runs()) == 2
    image.root.read("/etc/os-release")
    image.root.stat("/usr/lib/os-release")
    assert len(shim.runs()) == 2, "kept until the next write"


def test_a_write_then_a_read_sees_the_new_state(make_image: Callable[..., Path]) -> None:
    """Every kept answer (stat, content, listing, fingerprint, link) is dropped on a write."""
    image = Image.open(make_image(), EPOCH)
    root = image.root
    before = (
        root.stat("/etc/pifleet-new"),
        root.read("/etc/hostname"),
        root.fingerprint("/etc/hostname")[1],
        "pifleet-new" in root.listdir("/etc"),
        root.resolve("/etc/pifleet-link"),
    )
    root.stage(File("/etc/pifleet-new", 0o600, data=b"new\n"))
    root.stage(File("/etc/hostname", 0o644, data=b"pifleet-b\n"))  # same size as before
    root.stage(Symlink("/etc/pifleet-link", "hostname"))
    assert root.flush() == 3
    after = (
        root.stat("/etc/pifleet-new"),
        root.read("/etc/hostname"),
        root.fingerprint("/etc/hostname")[1],
        "pifleet-new" in root.listdir("/etc"),
        root.resolve("/etc/pifleet-link"),
    )
    new = after[0]
    assert before[0] is None and new is not None and (new.kind, new.mode) == ("regular", 0o600)
    assert (before[1], after[1]) == (b"raspberrypi\n", b"pifleet-b\n")
    assert after[2] == hashlib.sha256(b"pifleet-b\n").hexdigest() != before[2]
    assert (before[3], after[3]) == (False, True)
    assert (before[4], after[4]) == ("/etc/pifleet-link", "/etc/hostname")


def test_a_batch_of_stats_keeps_each_answer_with_its_path(
    make_image: Callable[..., Path], shim: Shim
) -> None:
    """Absent paths (debugfs says so on stderr only) and quoted names do not shift answers."""
    image = Image.open(make_image(), EPOCH)
    odd = '/etc/a "quoted" name'
    image.root.stage(File(odd, 0o640, data=b"odd"))
    image.root.flush()
    paths = ["/etc/missing", odd, "/nope/deeper", "/etc/hostname", "/usr/bin/sh", "/etc"]
    fresh = Image.open(image.path)
    runs = len(shim.runs())
    batched = fresh.root.stat_many(paths)
    assert len(shim.runs()) == runs + 1
    one_by_one = {p: Image.open(image.path).root.stat(p) for p in paths}
    assert batched == one_by_one
    assert [i.kind if i else None for i in batched.values()] == [
        None,
        "regular",
        None,
        "regular",
        "symlink",
        "directory",
    ]


def test_reading_ahead_never_raises_and_the_read_still_does(
    make_image: Callable[..., Path],
) -> None:
    image = Image.open(make_image(), EPOCH)
    image.root.stage(Symlink("/etc/loop-a", "loop-b"))
    image.root.stage(Symlink("/etc/loop-b", "loop-a"))
    image.root.flush()
    image.root.prefetch(["/etc/loop-a", "/etc/hostname"])
    with pytest.raises(BuildError, match="too many levels of symbolic links"):
        image.root.read("/etc/loop-a")


def test_links_resolve_as_before(make_image: Callable[..., Path]) -> None:
    """Relative, absolute and '..' links, and links in the middle of a path, resolved inside
    the filesystem; each file read matches what debugfs dumps of the resolved path."""
    image = Image.open(make_image(), EPOCH)
    root = image.root
    root.stage(Symlink("/etc/abs", "/usr/lib/os-release"))
    root.stage(Symlink("/etc/up", "../../../usr/lib/os-release"))
    root.stage(Symlink("/etc/dirlink", "/usr/lib"))
    root.flush()
    cases = {
        "/etc/os-release": "/usr/lib/os-release",
        "/etc/abs": "/usr/lib/os-release",
        "/etc/up": "/usr/lib/os-release",
        "/etc/dirlink/os-release": "/usr/lib/os-release",
        "/bin/sh": "/usr/bin/busybox",
        "/etc/./dirlink/../lib/os-release": "/usr/lib/os-release",
        "/missing/x": "/missing/x",
    }
    fresh = Image.open(image.path).root
    assert {p: fresh.resolve(p) for p in cases} == cases
    reads = fresh.read_many(list(cases))
    spec = f"{image.path}?offset={image.root_partition.start}"
    os_release = subprocess.run(
        ["debugfs", "-R", "cat /usr/lib/os-release", spec], capture_output=True, check=True
    ).stdout
    assert reads == {
        **{p: os_release for p, real in cases.items() if real == "/usr/lib/os-release"},
        "/bin/sh": elf_for("arm64").read_bytes(),
        "/missing/x": None,
    }


def test_a_large_file_is_read_in_one_run_and_not_kept(
    make_image: Callable[..., Path], shim: Shim, tmp_path: Path
) -> None:
    """A file over KEPT_FILE_LIMIT (a kernel, an initrd) is dumped once per read, never held."""
    big = tmp_path / "big"
    big.write_bytes(os.urandom(KEPT_FILE_LIMIT + 4096))
    image = Image.open(make_image(), EPOCH)
    image.root.stage(File("/usr/local/bin/big", 0o755, source=big))
    image.root.flush()
    fresh = Image.open(image.path).root
    fresh.stat("/usr/local/bin")
    runs = len(shim.runs())
    assert fresh.read("/usr/local/bin/big") == big.read_bytes()
    assert fresh.read("/usr/local/bin/big") == big.read_bytes()
    assert len(shim.runs()) == runs + 2
