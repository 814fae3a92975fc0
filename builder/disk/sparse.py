"""Sparse-file handling, done once, in one place.

Images are mostly holes. Everything that copies image bytes (base -> output,
golden -> per-device, carving a partition out and putting it back) goes through
here: data ranges are found with SEEK_DATA/SEEK_HOLE, moved with
copy_file_range (in-kernel, no user-space buffer), and holes are never read.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from builder.util.errors import BuildError
from builder.util.private import open_private

FICLONE = 0x40049409  # _IOW(0x94, 9, int) from linux/fs.h
_CHUNK = 64 * 1024 * 1024

Advance = Callable[[int], None]


def data_ranges(fd: int, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
    """(offset, length) of every data extent of `fd` within [start, end)."""
    if end is None:
        end = os.fstat(fd).st_size
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole remains
                return
            raise
        if data >= end:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield data, hole - data
        pos = hole


def copy_range(
    src: int, dst: int, src_off: int, dst_off: int, length: int, advance: Advance | None = None
) -> None:
    """Copy the data of src[src_off:src_off+length] to dst at dst_off, skipping holes.

    The destination's corresponding range must already be a hole (a fresh,
    truncated file) or be meant to keep its old bytes where the source has holes;
    use `punch` first otherwise.
    """
    for off, size in data_ranges(src, src_off, src_off + length):
        _copy_bytes(src, dst, off, dst_off + (off - src_off), size, advance)


def _copy_bytes(
    src: int, dst: int, src_off: int, dst_off: int, size: int, advance: Advance | None
) -> None:
    while size > 0:
        step = min(size, _CHUNK)
        try:
            done = os.copy_file_range(src, dst, step, src_off, dst_off)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            done = _pread_pwrite(src, dst, step, src_off, dst_off)
        if done == 0:
            raise BuildError(f"unexpected end of file while copying at byte {src_off}")
        if advance is not None:
            advance(done)
        src_off, dst_off, size = src_off + done, dst_off + done, size - done


def _pread_pwrite(src: int, dst: int, size: int, src_off: int, dst_off: int) -> int:
    data = os.pread(src, size, src_off)
    os.pwrite(dst, data, dst_off)
    return len(data)


def punch(fd: int, offset: int, length: int) -> None:
    """Turn [offset, offset+length) of `fd` into a hole (zeros that take no space)."""
    FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    if libc.fallocate(fd, mode, ctypes.c_long(offset), ctypes.c_long(length)) != 0:
        # No hole punching on this filesystem: write zeros instead.
        zeros = bytes(min(length, _CHUNK))
        pos, end = offset, offset + length
        while pos < end:
            pos += os.pwrite(fd, zeros[: min(len(zeros), end - pos)], pos)


def copy_file(src: Path, dst: Path, advance: Advance | None = None) -> None:
    """Copy `src` to a new file `dst` of the same size: reflink if possible, else sparse."""
    with open(src, "rb") as fin, open_private(dst) as fout:
        if try_reflink(fin.fileno(), fout.fileno()):
            if advance is not None:
                advance(os.fstat(fin.fileno()).st_size)
            return
        size = os.fstat(fin.fileno()).st_size
        fout.truncate(size)
        copy_range(fin.fileno(), fout.fileno(), 0, 0, size, advance)


def try_reflink(src: int, dst: int) -> bool:
    """Share all of src's blocks with dst (btrfs, XFS, bcachefs); False where unsupported."""
    try:
        fcntl.ioctl(dst, FICLONE, src)
        return True
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS):
            return False
        raise


def extract(image: Path, offset: int, length: int, dst: Path) -> None:
    """Carve [offset, offset+length) of `image` out into a new sparse file `dst`."""
    with open(image, "rb") as fin, open_private(dst) as fout:
        fout.truncate(length)
        copy_range(fin.fileno(), fout.fileno(), offset, 0, length)


def put_back(part_file: Path, image: Path, offset: int, length: int | None = None) -> None:
    """Write a carved partition file back into `image` at `offset`, holes included."""
    with open(part_file, "rb") as fin, open(image, "r+b") as fout:
        size = os.fstat(fin.fileno()).st_size if length is None else length
        punch(fout.fileno(), offset, size)
        copy_range(fin.fileno(), fout.fileno(), 0, offset, size)


def allocated_bytes(path: Path) -> int:
    """Bytes the file really occupies on disk (its data, not its holes)."""
    return os.stat(path).st_blocks * 512


_ZEROS = bytes(1024 * 1024)
_HASH_CHUNK = 4 * 1024 * 1024  # big enough for full hashing speed, small enough for low RSS


def sha256_file(path: Path, advance: Advance | None = None) -> str:
    """sha256 of the whole file, holes hashed as zeros without reading them from disk."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        for off, length in [*data_ranges(fd, 0, size), (size, 0)]:
            _hash_zeros(digest, off - pos)
            end = off + length
            while off < end:
                chunk = os.pread(fd, min(_HASH_CHUNK, end - off), off)
                if not chunk:
                    raise BuildError(f"{path}: unexpected end of file at byte {off}")
                digest.update(chunk)
                off += len(chunk)
                if advance is not None:
                    advance(len(chunk))
            pos = end
    return digest.hexdigest()


def _hash_zeros(digest: hashlib._Hash, count: int) -> None:
    while count > 0:
        step = min(count, len(_ZEROS))
        digest.update(_ZEROS[:step] if step < len(_ZEROS) else _ZEROS)
        count -= step
