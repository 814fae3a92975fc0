"""Compressed images in and out.

In: .img.xz, .img.zst, .img.gz and .zip bases are streamed through the
multi-threaded `xz`/`zstd`/`pigz` decompressors (or zipfile) straight into a
sparse raw file: all-zero blocks become holes, and the sha256 of the raw image
is computed on the way (to check Imager's `extract_sha256`).

Out: `.img.xz` (multi-threaded, readable by Raspberry Pi Imager and `xz -t`)
and `.img.zst` (`zstd -T0`), written to a temporary name, hashed as they
stream, renamed when complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import IO

from builder.disk.sparse import Advance
from builder.errors import BuildError, UserError
from builder.run import require_tool

_CHUNK = 4 * 1024 * 1024
_BLOCK = 64 * 1024
_ZERO_BLOCK = bytes(_BLOCK)
COMPRESSED = (".xz", ".zst", ".gz", ".zip")


def kind(path: Path) -> str:
    """'img', 'xz', 'zst', 'gz' or 'zip' from the file name."""
    for suffix in COMPRESSED:
        if path.name.endswith(suffix):
            return suffix[1:]
    return "img"


def decompress(src: Path, dest: Path, advance: Advance | None = None) -> str:
    """Decompress `src` into the new sparse file `dest`; returns the sha256 of the raw image."""
    fmt = kind(src)
    if fmt == "zip":
        return _unzip(src, dest, advance)
    tool = {"xz": ["xz", "-dc", "-T0"], "zst": ["zstd", "-dc", "-q"], "gz": _gunzip_tool()}.get(fmt)
    if tool is None:
        raise UserError(f"{src}: not a compressed image (.img.xz, .img.zst, .img.gz, .zip)")
    require_tool(
        tool[0], {"xz": "xz-utils", "zstd": "zstd", "pigz": "pigz", "gzip": "gzip"}[tool[0]]
    )
    with subprocess.Popen(
        [*tool, str(src)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        digest = write_sparse(proc.stdout, dest, advance)
        err = proc.stderr.read().decode(errors="replace").strip()
        code = proc.wait()
    if code != 0:
        dest.unlink(missing_ok=True)
        raise UserError(
            f"{src}: cannot decompress: {err.splitlines()[-1] if err else f'{tool[0]} failed'}"
        )
    return digest


def _gunzip_tool() -> list[str]:
    return ["pigz", "-dc"] if shutil.which("pigz") else ["gzip", "-dc"]


def _unzip(src: Path, dest: Path, advance: Advance | None) -> str:
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
            return write_sparse(stream, dest, advance)


def write_sparse(stream: IO[bytes], dest: Path, advance: Advance | None = None) -> str:
    """Copy `stream` into the new file `dest`, leaving all-zero 64 KiB blocks as holes."""
    digest = hashlib.sha256()
    size = 0
    with open(dest, "xb") as out:
        fd = out.fileno()
        while True:
            chunk = stream.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            view = memoryview(chunk)
            for i in range(0, len(chunk), _BLOCK):
                block = view[i : i + _BLOCK]
                if block != _ZERO_BLOCK[: len(block)]:
                    os.pwrite(fd, block, size + i)
            size += len(chunk)
            if advance is not None:
                advance(len(chunk))
        out.truncate(size)
    return digest.hexdigest()


def compress(src: Path, dest: Path, fmt: str, threads: int = 0) -> str:
    """Compress the image `src` into the new file `dest` (.img.xz or .img.zst); its sha256."""
    commands = {
        "img.xz": ["xz", "-c", "-6", f"-T{threads}", "--check=crc64"],
        "img.zst": ["zstd", "-c", "-q", "-10", f"-T{threads}"],
    }
    if fmt not in commands:
        raise UserError(f"unknown output format {fmt!r} (img, img.xz, img.zst)")
    argv = commands[fmt]
    require_tool(argv[0], {"xz": "xz-utils", "zstd": "zstd"}[argv[0]])
    digest = hashlib.sha256()
    with (
        open(dest, "xb") as out,
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
