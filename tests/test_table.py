"""MBR and GPT tables read and written in Python, checked against sfdisk."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from builder.disk.table import read_table, resized, write_table
from builder.util.errors import UserError

MIB = 1024 * 1024


def sfdisk_json(path: Path) -> dict:
    out = subprocess.run(
        ["sfdisk", "--json", str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)["partitiontable"]


def make_disk(path: Path, script: str, size: int = 100 * MIB) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(
        ["sfdisk", "-q", str(path)], input=script, text=True, check=True, capture_output=True
    )
    return path


def test_reads_mbr_like_sfdisk(tmp_path: Path) -> None:
    disk = make_disk(
        tmp_path / "m.img",
        "label: dos\nlabel-id: 0x1a2b3c4d\nstart=8192, size=100000, type=c, bootable\nstart=108192, type=83\n",
    )
    table = read_table(disk)
    ref = sfdisk_json(disk)
    assert table.scheme == "mbr"
    assert table.disk_id == "1a2b3c4d"
    assert [(p.start // 512, p.size // 512) for p in table.partitions] == [
        (p["start"], p["size"]) for p in ref["partitions"]
    ]
    assert [p.type for p in table.partitions] == ["0x0c", "0x83"]
    assert table.partition(2).uuid == "1a2b3c4d-02"
    assert table.partition(1).bootable


def test_reads_gpt_like_sfdisk(tmp_path: Path) -> None:
    disk = make_disk(
        tmp_path / "g.img",
        "label: gpt\nstart=2048, size=100000, type=U, name=boot\nstart=102048, type=L\n",
    )
    table = read_table(disk)
    ref = sfdisk_json(disk)
    assert table.scheme == "gpt"
    assert table.disk_id.upper() == ref["id"]
    for mine, theirs in zip(table.partitions, ref["partitions"], strict=True):
        assert (mine.start // 512, mine.size // 512) == (theirs["start"], theirs["size"])
        assert mine.uuid.upper() == theirs["uuid"]
        assert mine.type.upper() == theirs["type"]
    assert table.partition(1).name == "boot"


@pytest.mark.parametrize("label", ["dos", "gpt"])
def test_grow_last_partition_is_valid_for_sfdisk(tmp_path: Path, label: str) -> None:
    disk = make_disk(
        tmp_path / "d.img",
        f"label: {label}\nstart=2048, size=20000, type={'c' if label == 'dos' else 'U'}\nstart=22048, size=40000, type={'83' if label == 'dos' else 'L'}\n",
    )
    table = read_table(disk)
    with open(disk, "r+b") as f:
        f.truncate(200 * MIB)
    grown = resized(table, 2, 150 * MIB)
    write_table(disk, grown)
    assert read_table(disk) == grown
    verify = subprocess.run(["sfdisk", "-V", str(disk)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert sfdisk_json(disk)["partitions"][1]["size"] == 150 * MIB // 512


def test_written_mbr_is_read_back_by_sfdisk(tmp_path: Path) -> None:
    disk = make_disk(
        tmp_path / "m.img",
        "label: dos\nlabel-id: 0xdeadbeef\nstart=2048, size=4096, type=c\nstart=6144, size=8192, type=83\n",
    )
    table = read_table(disk)
    blank = tmp_path / "blank.img"
    with open(blank, "wb") as f:
        f.truncate(100 * MIB)
    write_table(blank, table)
    assert sfdisk_json(blank) == {**sfdisk_json(disk), "device": str(blank)} | {
        "partitions": [
            dict(p, node=p["node"].replace(str(disk), str(blank)))
            for p in sfdisk_json(disk)["partitions"]
        ]
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a disk image"),
        (b"hello world" * 100, "not a disk image"),
    ],
)
def test_not_a_disk_image(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.img"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_table(path)


def test_truncated_image_is_named(tmp_path: Path) -> None:
    disk = make_disk(
        tmp_path / "t.img",
        "label: dos\nstart=2048, size=4096, type=c\nstart=6144, size=80000, type=83\n",
    )
    with open(disk, "r+b") as f:
        f.truncate(10 * MIB)
    with pytest.raises(UserError, match=r"partition 2 ends at byte .*truncated"):
        read_table(disk)


def test_corrupt_gpt_checksum(tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "g.img", "label: gpt\nstart=2048, size=1000, type=L\n")
    with open(disk, "r+b") as f:
        f.seek(512 + 40)
        f.write(b"\xff")
    with pytest.raises(UserError, match="GPT header checksum"):
        read_table(disk)
