"""The FAT and ext4 engines on real images, every result read back with independent tools."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from builder.disk.entries import Directory, File, Symlink
from builder.disk.image import Image
from builder.util.errors import BuildError, UserError
from tests.image_read import debugfs, fat_read

EPOCH = 1_700_000_000


def test_open_finds_pi_partitions(make_image: Callable[..., Path]) -> None:
    image = Image.open(make_image())
    assert image.boot_partition.start == 16384 * 512
    assert image.boot.label() == "bootfs"
    assert image.root_partition.number == 2


def test_fat_writes_are_read_back_by_mtools(make_image: Callable[..., Path]) -> None:
    image = Image.open(make_image(), EPOCH)
    image.boot.stage("/pifleet/device.json", b'{"hostname": "pi-1"}\n')
    image.boot.stage("/user-data", b"#cloud-config\nhostname: pi-1\n")
    assert image.boot.flush() == 2
    assert fat_read(image.path, "/pifleet/device.json") == b'{"hostname": "pi-1"}\n'
    assert fat_read(image.path, "/user-data") == b"#cloud-config\nhostname: pi-1\n"
    image.boot.stage("/user-data", b"#cloud-config\nhostname: pi-1\n")
    assert image.boot.flush() == 0, "identical content must not be rewritten"
    image.boot.stage_delete("/pifleet/device.json")
    image.boot.flush()
    assert "device.json" not in image.boot.listdir("/pifleet")


def test_ext4_writes_exact_modes_owners_and_links(
    make_image: Callable[..., Path], tmp_path: Path
) -> None:
    image = Image.open(make_image(), EPOCH)
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    root = image.root
    root.stage(File("/usr/local/bin/tool", 0o755, source=big))
    root.stage(Symlink("/usr/local/bin/alias", "tool"))
    root.stage(File("/etc/pifleet/secret", 0o600, data=b"s\n"))
    root.stage(File("/home/ops/.profile", 0o640, data=b"x", uid=1000, gid=1000))
    root.stage(Directory("/var/lib/deep/er/dir", 0o700))
    assert root.flush() == 5
    stat = debugfs(image.path, "stat /etc/pifleet/secret")
    assert "Mode:  0600" in stat and "User:     0   Group:     0" in stat
    assert "User:  1000   Group:  1000" in debugfs(image.path, "stat /home/ops/.profile")
    assert 'Fast link dest: "tool"' in debugfs(image.path, "stat /usr/local/bin/alias")
    assert "Mode:  0700" in debugfs(image.path, "stat /var/lib/deep/er/dir")
    assert "Mode:  0755" in debugfs(image.path, "stat /var/lib/deep")
    dumped = tmp_path / "dumped"
    debugfs(image.path, f"dump /usr/local/bin/tool {dumped}")
    assert dumped.read_bytes() == big.read_bytes()
    root.check()


def test_ext4_unchanged_files_are_not_rewritten(make_image: Callable[..., Path]) -> None:
    image = Image.open(make_image(), EPOCH)
    image.root.stage(File("/etc/a", 0o644, data=b"a"))
    assert image.root.flush() == 1
    before = image.path.read_bytes()
    image.root.stage(File("/etc/a", 0o644, data=b"a"))
    assert image.root.flush() == 0
    assert image.path.read_bytes() == before
    image.root.stage(File("/etc/a", 0o600, data=b"a"))
    assert image.root.flush() == 1, "a mode change alone is a change"


def test_root_grows_when_full_and_says_so(
    make_image: Callable[..., Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = make_image(root_slack=1024 * 1024)
    image = Image.open(path, EPOCH)
    before = image.root.usage()
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(20 * 1024 * 1024))
    image.root.stage(File("/usr/local/bin/k3s", 0o755, source=payload))
    with caplog.at_level("INFO", logger="pifleet"):
        image.commit()
    assert "growing partition 2" in caplog.text
    after = Image.open(path)
    assert after.root.usage().size > before.size + 20 * 1024 * 1024
    assert after.root_partition.size == after.root.usage().size
    part = subprocess.run(
        ["sfdisk", "--json", str(path)], capture_output=True, text=True, check=True
    )
    assert str(after.root_partition.size // 512) in part.stdout
    after.root.check()


def test_root_grows_by_what_its_new_block_groups_take_too(
    make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """Each block group the resize adds carries its own inode table and bitmaps (6 % of a small
    filesystem made with mke2fs's defaults): growing by only the shortfall plus the 16 MiB
    headroom left a 768 MiB payload without blocks ("Could not allocate block")."""
    path = make_image(root_slack=1024 * 1024)
    image = Image.open(path, EPOCH)
    header = subprocess.run(
        ["dumpe2fs", "-h", f"{path}?offset={image.root_partition.start}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    facts = dict(ln.split(":", 1) for ln in header.splitlines() if ":" in ln)
    tables = int(facts["Inode count"]) * int(facts["Inode size"])
    assert tables / (int(facts["Block count"]) * int(facts["Block size"])) > 0.05
    payload = tmp_path / "payload"
    with open(payload, "wb") as f:
        for _ in range(24):
            f.write(os.urandom(32 * 1024 * 1024))
    image.root.stage(File("/usr/local/bin/k3s", 0o755, source=payload))
    image.commit()
    after = Image.open(path)
    back = tmp_path / "back"
    debugfs(after.path, f"dump /usr/local/bin/k3s {back}")
    assert back.read_bytes() == payload.read_bytes()
    assert after.root.usage().free >= 16 * 1024 * 1024  # the headroom is still there
    after.root.check()


def test_root_full_and_cannot_grow(make_image: Callable[..., Path], tmp_path: Path) -> None:
    path = make_image(root_slack=1024 * 1024, extra_partition=True)
    image = Image.open(path, EPOCH)
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(20 * 1024 * 1024))
    image.root.stage(File("/usr/local/bin/k3s", 0o755, source=payload))
    with pytest.raises(UserError, match="root filesystem is full and cannot grow"):
        image.commit()


def test_not_a_pi_layout(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    subprocess.run(
        ["sfdisk", "-q", str(path)],
        input="label: dos\nstart=2048, type=83\n",
        text=True,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["mke2fs", "-q", "-t", "ext4", "-E", "offset=1048576", str(path), "60M"],
        check=True,
        capture_output=True,
    )
    with pytest.raises(UserError, match="no FAT boot partition"):
        Image.open(path)


def test_debugfs_error_is_reported(make_image: Callable[..., Path]) -> None:
    image = Image.open(make_image(), EPOCH)
    image.root.stage(File("/etc/os-release/x", 0o644, data=b"x"))
    with pytest.raises(BuildError):
        image.root.flush()
