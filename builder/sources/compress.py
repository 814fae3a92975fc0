"""Compressed images in and out.

In: .img.xz, .img.zst, .img.gz and .zip bases are decompressed by the
multi-threaded `xz`/`zstd`/`pigz` (or zipfile) straight into a sparse raw file:
all-zero blocks become holes. xz and zstd write the file themselves; gzip and
zip output is streamed through `write_sparse`. The sha256 of the raw image is
computed only when asked (to check Imager's `extract_sha256`).

Out: `.img.xz` (multi-threaded, readable by Raspberry Pi Imager and `xz -t`)
and `.img.zst` (`zstd -T0`), written to a temporary name, hashed as they
stream, renamed when complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

from builder.disk.sparse import Advance, sha256_file
from builder.util.errors import BuildError, UserError
from builder.util.private import open_private
from builder.util.run import require_tool

_CHUNK = 4 * 1024 * 1024
_BLOCK = 64 * 1024
_ZERO_BLOCK = bytes(_BLOCK)
_ZERO_CHUNK = bytes(_CHUNK)
_PIPE_SIZE = 1024 * 1024  # /proc/sys/fs/pipe-max-size by default
COMPRESSED = (".xz", ".zst", ".gz", ".zip")
# Multi-threaded decompressors that leave zero runs as holes when stdout is a regular file.
_WRITES_HOLES = {"xz": ["xz", "-dc", "-T0"], "zst": ["zstd", "-dc", "-q", "--sparse"]}
_PACKAGES = {"xz": "xz-utils", "zstd": "zstd", "pigz": "pigz", "gzip": "gzip"}


def kind(path: Path) -> str:
    """'img', 'xz', 'zst', 'gz' or 'zip' from the file name."""
    for suffix in COMPRESSED:
        if path.name.endswith(suffix):
            return suffix[1:]
    return "img"


def decompress(
    src: Path, dest: Path, advance: Advance | None = None, *, hashed: bool = True
) -> str | None:
    """Decompress `src` into the new sparse file `dest`; the sha256 of the raw image if `hashed`
    (2 GiB cost a core-second: only worth it when there is a published sha256 to check)."""
    fmt = kind(src)
    if fmt == "zip":
        return _unzip(src, dest, advance, hashed)
    if fmt == "gz":  # gzip cannot leave holes: its output goes through write_sparse
        return _through_pipe(_gunzip_tool(), src, dest, advance, hashed)
    if fmt not in _WRITES_HOLES:
        raise UserError(f"{src}: not a compressed image (.img.xz, .img.zst, .img.gz, .zip)")
    _into_file(_WRITES_HOLES[fmt], src, dest, advance)
    return sha256_file(dest) if hashed else None


def _into_file(argv: list[str], src: Path, dest: Path, advance: Advance | None) -> None:
    """Run the decompressor with `dest` as its stdout: xz and zstd skip zero runs themselves
    (holes), so no byte of the image passes through Python."""
    require_tool(argv[0], _PACKAGES[argv[0]])
    with (
        open_private(dest) as out,
        subprocess.Popen([*argv, str(src)], stdout=out, stderr=subprocess.PIPE) as proc,
    ):
        try:
            _wait_reporting(proc, out.fileno(), advance)
        except BaseException:  # Ctrl-C, SIGTERM: no pipe to break, so stop it ourselves
            proc.kill()
            raise
        _check(proc, argv[0], src, dest)


def _wait_reporting(proc: subprocess.Popen[bytes], fd: int, advance: Advance | None) -> None:
    """Wait for `proc`, advancing the progress by the growth of the file it writes."""
    done = 0
    while True:
        try:
            proc.wait(timeout=0.2)
            return
        except subprocess.TimeoutExpired:
            if advance is not None:
                size = os.fstat(fd).st_size
                advance(size - done)
                done = size


def _through_pipe(
    argv: list[str], src: Path, dest: Path, advance: Advance | None, hashed: bool
) -> str | None:
    require_tool(argv[0], _PACKAGES[argv[0]])
    with subprocess.Popen(
        [*argv, str(src)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        _widen(proc.stdout)
        digest = write_sparse(proc.stdout, dest, advance, hashed=hashed)
        _check(proc, argv[0], src, dest)
    return digest


def _check(proc: subprocess.Popen[bytes], tool: str, src: Path, dest: Path) -> None:
    """One line naming `src` and the tool's last complaint if it failed; `dest` removed."""
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace").strip()
    if proc.wait() != 0:
        dest.unlink(missing_ok=True)
        last = err.splitlines()[-1] if err else f"{tool} failed"
        raise UserError(f"{src}: cannot decompress: {last}")


def _widen(pipe: IO[bytes]) -> None:
    """Let the decompressor run up to 1 MiB ahead of us (64 KiB by default): fewer stalls."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)


def _gunzip_tool() -> list[str]:
    return ["pigz", "-dc"] if shutil.which("pigz") else ["gzip", "-dc"]


def _unzip(src: Path, dest: Path, advance: Advance | None, hashed: bool) -> str | None:
    try:
        archive = zipfile.ZipFile(src)
    except zipfile.BadZipFile:
        raise UserError(f"{src}: not a valid zip archive") from None
    with archive:
        images = [m for m in archive.infolist() if m.filename.endswith(".img") and not m.is_dir()]
        if len(images) != 1:
            names = ", ".join(m.filename for m in archive.infolist()[:6])
            raise UserError(
                f"{src}: expected exactly one .img in the zip, found {len(images)} ({names})"
            )
        with archive.open(images[0]) as stream:
            return write_sparse(stream, dest, advance, hashed=hashed)


def write_sparse(
    stream: IO[bytes], dest: Path, advance: Advance | None = None, *, hashed: bool = True
) -> str | None:
    """Copy `stream` into the new file `dest`, leaving all-zero 64 KiB blocks as holes.

    Returns the sha256 of the stream if `hashed`, computed on another core while the
    chunk is written.
    """
    digest = hashlib.sha256() if hashed else None
    size = 0
    with open_private(dest) as out, ThreadPoolExecutor(max_workers=1) as other_core:
        while chunk := stream.read(_CHUNK):
            # hashlib releases the GIL: the digest runs while the chunk is written
            pending = other_core.submit(digest.update, chunk) if digest is not None else None
            _write_data(out.fileno(), chunk, size)
            if pending is not None:
                pending.result()
            size += len(chunk)
            if advance is not None:
                advance(len(chunk))
        out.truncate(size)
    return digest.hexdigest() if digest is not None else None


def _write_data(fd: int, chunk: bytes, offset: int) -> None:
    """Write the runs of non-zero blocks of `chunk` at `offset`; zero blocks are left unwritten."""
    if len(chunk) == _CHUNK and chunk == _ZERO_CHUNK:
        return
    view = memoryview(chunk)
    run = -1  # start of the current run of data blocks
    for i in range(0, len(chunk), _BLOCK):
        block = chunk[i : i + _BLOCK]  # a bytes slice compares with memcmp, a memoryview does not
        if block == _ZERO_BLOCK[: len(block)]:
            if run >= 0:
                _pwrite_all(fd, view[run:i], offset + run)
                run = -1
        elif run < 0:
            run = i
    if run >= 0:
        _pwrite_all(fd, view[run:], offset + run)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        done = os.pwrite(fd, data, offset)
        data, offset = data[done:], offset + done


def compress(src: Path, dest: Path, fmt: str, threads: int = 0) -> str:
    """Compress the image `src` into the new file `dest` (.img.xz or .img.zst); its sha256."""
    commands = {
        "img.xz": ["xz", "-c", "-6", f"-T{threads}", "--check=crc64"],
        "img.zst": ["zstd", "-c", "-q", f"-T{threads}"],  # zstd's own level: as fast as the CLI
    }
    if fmt not in commands:
        raise UserError(f"unknown output format {fmt!r} (img, img.xz, img.zst)")
    argv = commands[fmt]
    require_tool(argv[0], {"xz": "xz-utils", "zstd": "zstd"}[argv[0]])
    digest = hashlib.sha256()
    with (
        open_private(dest) as out,
        subprocess.Popen([*argv, str(src)], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc,
    ):
        assert proc.stdout is not None and proc.stderr is not None
        while chunk := proc.stdout.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
        err = proc.stderr.read().decode(errors="replace").strip()
        if proc.wait() != 0:
            raise BuildError(f"{argv[0]} failed compressing {src.name}: {err or proc.returncode}")
    return digest.hexdigest()
