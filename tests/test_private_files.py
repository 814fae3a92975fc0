"""Files that may hold a secret are 0600 from their first byte (issue 11, item 1).

A second user is created for the test and tries to read what a build leaves
while it runs; the build is stopped with SIGKILL at a chosen step (a wrapper
replaces one function of the real CLI with `kill -9 self`), so what it left is
exactly what it had on disk at that moment. The next run in that folder removes
the leftovers of the killed one.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.util import atomic, private
from tests.conftest import REPO, TEST_TOKEN, fleet_yaml, pifleet
from tests.layouts import make_pi_image

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates a second user (needs root)")

# Replace `target` (module:function) by SIGKILL of the whole process, then run the CLI.
_KILLER = """
import importlib, os, signal, sys
module, name = sys.argv[1].split(":")
cls = None
if "." in name:
    cls, name = name.split(".")
owner = importlib.import_module(module)
if cls:
    owner = getattr(owner, cls)
real = getattr(owner, name)
def killed(*args, **kwargs):
    if os.environ.get("KILL_WHEN") and not kwargs.get(os.environ["KILL_WHEN"]):
        return real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
setattr(owner, name, killed)
from builder.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def other_user() -> Iterator[str]:
    name = f"pftest{os.getpid() % 100000}"
    subprocess.run(["useradd", "--system", "--no-create-home", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)


def read_as(user: str, path: Path) -> subprocess.CompletedProcess[bytes]:
    entry = pwd.getpwnam(user)
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={entry.pw_uid}",
            f"--regid={entry.pw_gid}",
            "--clear-groups",
            "cat",
            str(path),
        ],
        capture_output=True,
    )


@pytest.fixture
def shared() -> Iterator[Path]:
    """A fleet in a folder every user may enter (as a project folder under /srv would be)."""
    top = Path(tempfile.mkdtemp(prefix="pifleet-sharedtest"))
    top.chmod(0o755)
    make_pi_image(top / "base.img")
    (top / "token").write_text(TEST_TOKEN + "\n")
    (top / "token").chmod(0o600)
    (top / "fleet.yaml").write_text(fleet_yaml())
    (top / "tmp").mkdir(mode=0o755)
    (top / "tmp").chmod(0o1777)
    yield top
    shutil.rmtree(top, ignore_errors=True)


def killed_at(target: str, args: list[str], cwd: Path, when: str = "") -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(cwd / "tmp"), "KILL_WHEN": when}
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, target, *args], cwd=cwd, env=env, capture_output=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()


def assert_private(path: Path, user: str) -> None:
    st = path.lstat()
    assert stat.S_IMODE(st.st_mode) == 0o600, f"{path} is {stat.S_IMODE(st.st_mode):o}"
    proc = read_as(user, path)
    assert proc.returncode != 0 and b"Permission denied" in proc.stderr


def test_build_temporary_image_is_private_and_removed_by_next_run(
    shared: Path, other_user: str
) -> None:
    killed_at("builder.inspect:collect", ["build", "fleet.yaml"], shared)
    leftovers = list((shared / "out").glob(".pifleet-run-*/edge-fleet.img"))
    assert len(leftovers) == 1
    assert stat.S_IMODE(leftovers[0].parent.stat().st_mode) == 0o700
    assert TEST_TOKEN.encode() in leftovers[0].read_bytes()  # it does hold the secret
    assert_private(leftovers[0], other_user)
    proc = pifleet("build", "fleet.yaml", cwd=shared, env={"TMPDIR": str(shared / "tmp")})
    assert proc.returncode == 0, proc.stderr
    assert not leftovers[0].parent.exists()
    assert stat.S_IMODE((shared / "out/edge-fleet.img").stat().st_mode) == 0o600


def test_build_copy_is_private_before_any_step(shared: Path, other_user: str) -> None:
    killed_at("builder.build:customize", ["build", "fleet.yaml"], shared)
    (leftover,) = (shared / "out").glob(".pifleet-run-*/edge-fleet.img")
    assert_private(leftover, other_user)


def test_root_filesystem_staging_is_private_and_removed_by_next_run(
    shared: Path, other_user: str
) -> None:
    killed_at("builder.disk.ext4:Ext4Filesystem._debugfs", ["build", "fleet.yaml"], shared, "write")
    staged = [p for p in (shared / "tmp").rglob("*") if p.is_file() and "ext4" in str(p)]
    holding = [p for p in staged if TEST_TOKEN.encode() in p.read_bytes()]
    assert holding, staged
    for path in holding:
        assert_private(path, other_user)
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    proc = pifleet("build", "fleet.yaml", cwd=shared, env={"TMPDIR": str(shared / "tmp")})
    assert proc.returncode == 0, proc.stderr
    assert not any(p.exists() for p in staged)


def test_flash_to_file_temporary_is_removed_by_next_run(shared: Path, other_user: str) -> None:
    proc = pifleet("build", "fleet.yaml", cwd=shared)
    assert proc.returncode == 0, proc.stderr
    killed_at("builder.fleet.flash:verify", ["flash", "out/edge-fleet.img", "card.img"], shared)
    (leftover,) = shared.glob(".card.img.pifleet-*.tmp")
    assert_private(leftover, other_user)
    proc = pifleet("flash", "out/edge-fleet.img", "card.img", cwd=shared)
    assert proc.returncode == 0, proc.stderr
    assert not leftover.exists()


def test_boot_test_overlay_is_private(shared: Path, other_user: str) -> None:
    """`boot-test --keep` leaves the VM disk, which carries the join token written for the boot."""
    from builder.qemu import overlay

    keep = shared / "keep"
    keep.mkdir(mode=0o755)
    keep.chmod(0o755)  # even in a folder others may enter
    disk = keep / "disk.qcow2"
    overlay.create(shared / "base.img", disk)
    overlay.write_boot_files(shared / "base.img", disk, {"/pifleet/token": b"s3cr3t"}, 1700000000)
    assert_private(disk, other_user)
    assert list(keep.iterdir()) == [disk]


def test_stale_names_are_matched_strictly(tmp_path: Path) -> None:
    """Only pifleet's own temporary names of dead processes of this user go."""
    child = subprocess.Popen(["true"])  # a pid that surely exited: our own reaped child's
    child.wait()
    names = {
        f".x.img.pifleet-{child.pid}.tmp": False,  # removed
        f".x.img.pifleet-{os.getpid()}.tmp": True,  # this run's own
        f"x.img.pifleet-{child.pid}.tmp": True,  # not hidden: not ours
        f".x.img.pifleet-{child.pid}.tmp.keep": True,
        f".x.img.pifleet-{child.pid}a.tmp": True,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"")
    link = tmp_path / f".y.pifleet-{child.pid}.tmp"
    link.symlink_to(tmp_path / f"x.img.pifleet-{child.pid}.tmp")
    atomic.remove_stale(tmp_path)
    for name, kept in names.items():
        assert (tmp_path / name).exists() == kept, name
    assert link.is_symlink()
    (tmp_path / f"pifleet-ext4-{child.pid}-abcd_123").mkdir()
    (tmp_path / f"pifleet-ext4-{child.pid}-abcd_1234").mkdir()
    (tmp_path / f"pifleet-fat-{child.pid}-abcd_123").mkdir()
    private.remove_stale_dirs(tmp_path, "ext4")
    assert sorted(p.name for p in tmp_path.glob("pifleet-*")) == [
        f"pifleet-ext4-{child.pid}-abcd_1234",
        f"pifleet-fat-{child.pid}-abcd_123",
    ]


def test_an_interrupt_right_after_a_temporary_file_is_made_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """test_interrupts found `.SHA256SUMS.pifleet-<pid>.tmp` after a SIGINT: the signal landed
    between the temporary file's creation and the `try` that removes it."""
    from builder.util import atomic

    real = atomic.create_private

    def interrupted(path: Path) -> int:
        os.close(real(path))
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "create_private", interrupted)
    with pytest.raises(KeyboardInterrupt), atomic.replace_when_done(tmp_path / "SHA256SUMS"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_the_cli_removes_a_temporary_file_a_signal_left_unregistered(tmp_path: Path) -> None:
    """A signal between a context manager's __enter__ and its ExitStack registration: the
    CLI's interrupt path removes the file through `remove_own_temps`."""
    from builder.util import atomic

    manager = atomic.replace_when_done(tmp_path / "manifest.json")
    tmp = manager.__enter__()
    assert tmp.exists()
    assert atomic.remove_own_temps() == [tmp]
    assert list(tmp_path.iterdir()) == []


def test_boot_partition_copies_are_private_before_mcopy_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seed files copied out of the boot partition (network-config holds the Wi-Fi PSK)
    exist, empty and 0600, before mcopy writes a byte into them, whatever the umask: an
    mcopy wrapper first on PATH lists what the destination holds when it starts, then runs
    the real mcopy. An empty file and a missing one still read as such."""
    from builder.disk.fat import FatFilesystem
    from builder.disk.table import read_table

    image = make_pi_image(tmp_path / "base.img")
    boot = FatFilesystem(image, read_table(image).partition(1).start, 1700000000)
    boot.stage("/network-config", b"password: not-a-real-psk\n")
    boot.stage("/empty", b"")
    boot.flush()
    seen = tmp_path / "seen"
    wrapper = tmp_path / "bin" / "mcopy"
    wrapper.parent.mkdir()
    real = shutil.which("mcopy")
    wrapper.write_text(
        "#!/bin/sh\nfor last; do :; done\n"
        f'case "$last" in */) stat -c "%n %a %s" "$last"* >> {seen} 2>/dev/null;; esac\n'
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    old = os.umask(0)
    try:
        found = boot._read_disk_many(["/empty", "/missing", "/network-config"])
    finally:
        os.umask(old)
    assert found == {"/empty": b"", "/network-config": b"password: not-a-real-psk\n"}
    listed = {
        Path(line.split()[0]).name: line.split()[1:] for line in seen.read_text().splitlines()
    }
    assert listed["network-config"] == ["600", "0"], listed
    assert all(mode == "600" for mode, _size in listed.values()), listed
