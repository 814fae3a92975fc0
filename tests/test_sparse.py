"""Sparse copies: holes stay holes and are never read; content is exact."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from builder.disk import sparse

MIB = 1024 * 1024


def sparse_file(path: Path, size: int, chunks: dict[int, bytes]) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in chunks.items():
            f.seek(off)
            f.write(data)
    return path


def test_data_ranges_finds_only_data(tmp_path: Path) -> None:
    path = sparse_file(tmp_path / "s", 64 * MIB, {0: b"a" * 4096, 32 * MIB: b"b" * 8192})
    with open(path, "rb") as f:
        ranges = list(sparse.data_ranges(f.fileno()))
    assert ranges == [(0, 4096), (32 * MIB, 8192)]


def test_copy_keeps_holes_and_content(tmp_path: Path) -> None:
    src = sparse_file(
        tmp_path / "src", 256 * MIB, {MIB: os.urandom(MIB), 200 * MIB: os.urandom(4096)}
    )
    dst = tmp_path / "dst"
    copied: list[int] = []
    sparse.copy_file(src, dst, copied.append)
    assert dst.read_bytes() == src.read_bytes()
    assert sparse.allocated_bytes(dst) <= 2 * MIB
    assert sum(copied) in (MIB + 4096, 256 * MIB)  # data only, or the whole file when reflinked


def test_extract_and_put_back_round_trip(tmp_path: Path) -> None:
    image = sparse_file(tmp_path / "img", 64 * MIB, {10 * MIB: b"x" * 4096, 30 * MIB: b"y" * 4096})
    part = tmp_path / "part"
    sparse.extract(image, 8 * MIB, 16 * MIB, part)
    data = part.read_bytes()
    assert len(data) == 16 * MIB and data[2 * MIB : 2 * MIB + 4096] == b"x" * 4096
    assert data.count(b"y") == 0
    with open(part, "r+b") as f:
        f.seek(0)
        f.write(b"z" * 100)
        f.seek(2 * MIB)
        f.write(b"\0" * 4096)
    sparse.put_back(part, image, 8 * MIB)
    result = image.read_bytes()
    assert result[8 * MIB : 8 * MIB + 100] == b"z" * 100
    assert result[10 * MIB : 10 * MIB + 4096] == b"\0" * 4096
    assert result[30 * MIB : 30 * MIB + 4096] == b"y" * 4096


def test_sha256_counts_holes_as_zeros(tmp_path: Path) -> None:
    path = sparse_file(tmp_path / "s", 9 * MIB + 123, {3 * MIB: b"data" * 1000})
    assert sparse.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
