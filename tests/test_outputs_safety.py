"""Outputs never land on inputs, never carry another device's identity, and go where the user
said (issue 21, items 2, 5 and 8).

- `personalize -o` and `flash` to a regular file refuse any target that is the base, the
  golden image, the fleet file, a token file or a `.bmap`: by path, through a symlink or as a
  hard link. A build refuses an output (a device image) that would replace its base, and a
  device named like the fleet (two outputs on one name).
- A base carrying a device identity in its boot partition is refused in one line.
- `build --per-device -o DIR` keeps everything of the run in DIR; the folders it makes are
  0700 whatever the umask; an identity that is not the user's own, or that others may write,
  is refused.
- Bad input to personalize and flash is one line with the right exit code.

Every case runs the real CLI on a real golden image, and checks the inputs are unchanged.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.disk.table import read_table
from tests.conftest import REPO, TEST_TOKEN, fleet_yaml, pifleet
from tests.image_read import MTOOLS_ENV, sha256
from tests.layouts import make_pi_image

GOLDEN = "out/edge-fleet.img"
DEVICES = "devices:\n" + "\n".join(f"  - {{hostname: pi-{i:03d}}}" for i in range(1, 4))
INPUTS = ("base.img", "fleet.yaml", "token", GOLDEN, GOLDEN + ".bmap")


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    out = proc.stdout + proc.stderr
    assert TEST_TOKEN not in out and "Traceback" not in out, out
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pifleet: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def build_error(proc: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """A build logs its progress on stderr: exactly one of its lines is pifleet's error."""
    assert "Traceback" not in proc.stderr and TEST_TOKEN not in proc.stderr, proc.stderr
    assert proc.returncode == code, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("pifleet: ")]
    assert len(errors) == 1 and errors[0].startswith("pifleet: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def leftovers(d: Path) -> list[str]:
    return sorted(str(p) for p in d.rglob("*") if ".pifleet-" in p.name)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """base.img, token, fleet.yaml (pi-001..003), the golden image and out/pi-001.img."""
    d = tmp_path_factory.mktemp("safety")
    make_pi_image(d / "base.img")
    (d / "token").write_text(TEST_TOKEN + "\n")
    (d / "token").chmod(0o600)
    (d / "fleet.yaml").write_text(fleet_yaml(devices=DEVICES))
    assert pifleet("build", "fleet.yaml", cwd=d).returncode == 0
    proc = pifleet("personalize", GOLDEN, "--config", "fleet.yaml", "--device", "pi-001", cwd=d)
    assert proc.returncode == 0, proc.stderr
    return d


@pytest.fixture
def work(built: Path, tmp_path: Path) -> Iterator[Path]:
    """A private (sparse) copy of the fleet folder; its inputs are checked unchanged after."""
    d = tmp_path / "fleet"
    subprocess.run(["cp", "-a", "--sparse=always", str(built), str(d)], check=True)
    before = {name: sha256(d / name) for name in INPUTS}
    yield d
    assert {name: sha256(d / name) for name in INPUTS} == before, "an input changed"


def links(d: Path) -> None:
    """Other names for inputs: a symlink and a hard link to the base, one to the golden image."""
    (d / "base-link.img").symlink_to("base.img")
    os.link(d / "base.img", d / "base-hard.img")
    os.link(d / GOLDEN, d / "golden-hard.img")


# --- item 2: outputs onto inputs -----------------------------------------------------------

ONTO_INPUTS = [  # (output, what personalize says, what flash says)
    ("base.img", "is the base image", "is the base image"),
    ("base-link.img", "is the base image", "is the base image"),
    ("base-hard.img", "is the base image", "is the base image"),
    ("golden-hard.img", "would overwrite the golden image", "is the image being flashed itself"),
    ("fleet.yaml", "is the fleet file", "is the fleet file"),
    ("token", "is the token file", "is the token file"),
    ("out/pi-001.img.bmap", "a block map's name", "a block map's name"),
]
IDS = [c[0] for c in ONTO_INPUTS]


@pytest.mark.parametrize(("output", "expected", "_flash"), ONTO_INPUTS, ids=IDS)
def test_personalize_refuses_an_output_onto_an_input(
    work: Path, output: str, expected: str, _flash: str
) -> None:
    links(work)
    proc = pifleet(
        "personalize", GOLDEN, "--config", "fleet.yaml", "--device", "pi-002", "-o", output,
        cwd=work,
    )  # fmt: skip
    one_line_error(proc, 2, f"{output}: ", expected)
    assert not (work / "out/pi-001.img.bmap").exists()
    assert leftovers(work) == []


@pytest.mark.parametrize(("target", "_personalize", "expected"), ONTO_INPUTS, ids=IDS)
def test_flash_refuses_a_target_onto_an_input(
    work: Path, target: str, _personalize: str, expected: str
) -> None:
    links(work)
    proc = pifleet(
        "flash", GOLDEN, target, "--yes", "--config", "fleet.yaml", "--device", "pi-002",
        cwd=work,
    )  # fmt: skip
    one_line_error(proc, 2, f"{target}: ", expected)
    assert "wrote and verified" not in proc.stdout
    assert leftovers(work) == []


def test_flash_without_config_refuses_the_base_its_manifest_names(fleet_dir: Path) -> None:
    """Without --config, the golden image's manifest.json says which base it was built from."""
    assert pifleet("build", "fleet.yaml", cwd=fleet_dir).returncode == 0
    before = sha256(fleet_dir / "base.img")
    proc = pifleet("flash", GOLDEN, "base.img", "--yes", cwd=fleet_dir)
    one_line_error(proc, 2, "base.img: is the base edge-fleet.img was built from")
    assert sha256(fleet_dir / "base.img") == before


def test_build_refuses_a_device_image_onto_its_base(fleet_dir: Path) -> None:
    """`base: {path: out/pi-002.img}` and a device pi-002: its image would replace the base."""
    (fleet_dir / "out").mkdir()
    shutil.copyfile(fleet_dir / "base.img", fleet_dir / "out/pi-002.img")
    before = sha256(fleet_dir / "out/pi-002.img")
    config = fleet_yaml(base="base: {path: out/pi-002.img}", devices=DEVICES)
    (fleet_dir / "fleet.yaml").write_text(config)
    proc = pifleet("build", "fleet.yaml", "--per-device", cwd=fleet_dir)
    build_error(proc, 2, "out/pi-002.img: is the base image")
    assert sorted(p.name for p in (fleet_dir / "out").iterdir()) == ["pi-002.img"]
    assert sha256(fleet_dir / "out/pi-002.img") == before


def test_a_device_named_like_the_fleet_is_refused(fleet_dir: Path) -> None:
    """Its image and the golden image would be one file: the run stops, nothing appears."""
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(devices="devices: [{hostname: edge-fleet}]"))
    proc = pifleet("build", "fleet.yaml", "--per-device", cwd=fleet_dir)
    build_error(proc, 2, "out/edge-fleet.img: written twice by this run")
    assert not (fleet_dir / "out").exists()


def fat_put(image: Path, path: str, data: bytes) -> None:
    boot = read_table(image).partition(1).start
    spec = f"{image}@@{boot}"
    subprocess.run(["mmd", "-D", "s", "-i", spec, "::/pifleet"], env=MTOOLS_ENV, check=False)
    src = image.parent / "fat-put.tmp"
    src.write_bytes(data)
    subprocess.run(["mcopy", "-o", "-i", spec, str(src), f"::{path}"], env=MTOOLS_ENV, check=True)
    src.unlink()


@pytest.mark.parametrize(
    ("base", "carries"),
    [
        ("out/pi-001.img", "a pifleet device identity (/pifleet/device.json"),
        ("password.img", "a device's node password (/pifleet/node-password"),
        ("token.img", "a join token (/pifleet/token"),
    ],
    ids=["device-image", "node-password", "token"],
)
def test_a_base_carrying_a_device_identity_is_refused(work: Path, base: str, carries: str) -> None:
    shutil.copyfile(work / "base.img", work / "password.img")
    fat_put(work / "password.img", "/pifleet/node-password", b"0123456789abcdef0123456789abcdef\n")
    shutil.copyfile(work / "base.img", work / "token.img")
    fat_put(work / "token.img", "/pifleet/token", TEST_TOKEN.encode() + b"\n")
    proc = pifleet("build", "fleet.yaml", "--base", base, "-o", "rebuilt", cwd=work)
    build_error(proc, 2, f"{base}: the base carries {carries} in its boot partition)")
    assert not (work / "rebuilt").exists()


def test_in_place_with_an_output_is_refused(work: Path) -> None:
    proc = pifleet(
        "personalize", "out/pi-001.img", "--config", "fleet.yaml", "--device", "pi-002",
        "--in-place", "-o", "x.img", cwd=work,
    )  # fmt: skip
    one_line_error(proc, 2, "x.img: -o and --in-place exclude each other")
    assert not (work / "x.img").exists()


# --- item 8: personalize and flash bad input -----------------------------------------------


def test_personalize_to_a_directory_is_one_line(work: Path) -> None:
    (work / "cards").mkdir()
    proc = pifleet(
        "personalize", GOLDEN, "--config", "fleet.yaml", "--device", "pi-002", "-o", "cards",
        cwd=work,
    )  # fmt: skip
    one_line_error(proc, 2, "cards: is a directory; give the output image's file name")
    assert list((work / "cards").iterdir()) == []


def test_personalize_of_a_directory_is_one_line(work: Path) -> None:
    proc = pifleet("personalize", "out", "--config", "fleet.yaml", "--device", "pi-002", cwd=work)
    one_line_error(proc, 2, "out: is a directory, not an image file")


def test_personalize_errors_name_the_image_given(work: Path) -> None:
    """Was the deleted temporary copy (`.pi-002.img.pifleet-<pid>.tmp`)."""
    proc = pifleet(
        "personalize", "base.img", "--config", "fleet.yaml", "--device", "pi-002", cwd=work
    )
    line = one_line_error(proc, 2)
    assert (
        line == "pifleet: error: base.img: not built by `pifleet build` (no /etc/pifleet/join.json)"
    )
    assert not (work / "pi-002.img").exists()


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounts a read-only tmpfs (needs root)")
    mount = tmp_path / "ro"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M,ro", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_outputs_on_a_read_only_filesystem_are_one_line(work: Path, read_only: Path) -> None:
    dest = read_only / "pi-002.img"
    proc = pifleet(
        "personalize", GOLDEN, "--config", "fleet.yaml", "--device", "pi-002", "-o", str(dest),
        cwd=work,
    )  # fmt: skip
    one_line_error(proc, 2, f"{dest}: cannot write in {read_only}: Read-only file system")
    card = read_only / "card.img"
    proc = pifleet("flash", GOLDEN, str(card), "--yes", cwd=work)
    one_line_error(proc, 2, f"{card}: cannot write in {read_only}: Read-only file system")


# --- item 5: the chosen folder, private folders, the user's own identities -----------------


def build_per_device(
    d: Path, *args: str, umask: int | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "builder", "build", "fleet.yaml", "--per-device", *args],
        cwd=d, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        umask=-1 if umask is None else umask,
    )  # fmt: skip


def test_per_device_keeps_everything_in_the_chosen_folder(fleet_dir: Path) -> None:
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(devices=DEVICES))
    proc = build_per_device(fleet_dir, "-o", "elsewhere")
    assert proc.returncode == 0, proc.stderr
    assert not (fleet_dir / "out").exists(), "output.dir got some of the run"
    chosen = fleet_dir / "elsewhere"
    for i in range(1, 4):
        assert (chosen / f"pi-{i:03d}.img").is_file()
        assert (chosen / f"devices/pi-{i:03d}/node-password").is_file()
    assert len((chosen / "known_hosts").read_text().splitlines()) == 3


def test_folders_are_private_whatever_the_umask(fleet_dir: Path) -> None:
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(devices=DEVICES))
    proc = build_per_device(fleet_dir, "-o", "new/out", umask=0)
    assert proc.returncode == 0, proc.stderr
    out = fleet_dir / "new/out"
    for folder in (fleet_dir / "new", out, out / "devices", out / "devices/pi-001"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for path in (out / "devices/pi-001").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((out / "edge-fleet.img").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "known_hosts").stat().st_mode) == 0o644  # public keys


def planted(kind: str, identity: Path) -> None:
    """Make the stored identity of pi-003 one the user must not trust."""
    if kind == "other-owner":
        for path in [identity, *identity.iterdir()]:
            os.lchown(path, 4242, 4242)
    elif kind == "folder-writable":
        identity.chmod(0o777)
    elif kind == "devices-writable":
        identity.parent.chmod(0o777)
    elif kind == "file-writable":
        (identity / "node-password").chmod(0o666)
    elif kind == "symlink":
        elsewhere = identity.parent.parent.parent / "elsewhere"
        identity.rename(elsewhere)
        identity.symlink_to(elsewhere)


@pytest.mark.parametrize(
    ("kind", "where", "expected"),
    [
        ("other-owner", "devices/pi-003", "owned by uid 4242, not by this user"),
        ("folder-writable", "devices/pi-003", "group or others may write this folder (mode 0777)"),
        ("devices-writable", "devices", "group or others may write this folder (mode 0777)"),
        ("file-writable", "devices/pi-003/node-password", "group or others may write this file"),
        ("symlink", "devices/pi-003", "a symbolic link"),
    ],
)
def test_an_identity_others_could_have_planted_is_refused(
    fleet_dir: Path, kind: str, where: str, expected: str
) -> None:
    """Was: the build used whatever key and node password it found there."""
    if kind == "other-owner" and os.geteuid() != 0:
        pytest.skip("chown needs root")
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(devices=DEVICES))
    from builder.fleet.devicekeys import ensure_identity

    ensure_identity(fleet_dir / "out", "pi-003")
    planted(kind, fleet_dir / "out/devices/pi-003")
    proc = build_per_device(fleet_dir)
    build_error(
        proc, 2, f"{fleet_dir / 'out' / where}: {expected}", "refusing the identity of pi-00"
    )
    assert not list((fleet_dir / "out").glob("*.img"))
    assert not (fleet_dir / "out/known_hosts").exists()
