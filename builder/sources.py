"""Where the base image and the K3s binary come from: local files (catalog and downloads
are resolved by builder.catalog / builder.fetch).
"""

from __future__ import annotations

from pathlib import Path

from builder.config import BaseSource, K3sSource
from builder.digests import sha256_of
from builder.errors import UserError
from builder.plan import Input


def obtain_base(src: BaseSource, arch: str, *, where: str) -> Input:
    if src.path is not None:
        return local_base(src.path, src.sha256, where=f"{where}.path")
    raise UserError(
        f"{where}: only base.path is supported in this build (catalog and URLs: pifleet fetch)"
    )


def obtain_k3s(src: K3sSource, arch: str, *, where: str) -> Input:
    if src.binary is not None:
        return local_k3s(src.binary, src.sha256, where=f"{where}.binary")
    raise UserError(
        f"{where}: only k3s.binary is supported in this build (releases: pifleet fetch)"
    )


def obtain_airgap(src: K3sSource, arch: str, k3s: Input, *, where: str) -> Input | None:
    if src.airgap_path is not None:
        return _local_file("airgap-images", src.airgap_path, None, where=f"{where}.airgap_images")
    if src.airgap_images:
        raise UserError(f"{where}.airgap_images: downloading air-gap images needs k3s.version")
    return None


def local_base(path: Path, sha256: str | None, *, where: str) -> Input:
    """A raw base image. Without an expected sha256 the digest (for the manifest only) is left
    to the build, which computes it while copying."""
    if path.suffix != ".img":
        raise UserError(f"{where}: {path}: expected a raw .img file")
    if sha256 is None:
        _check_file(path, where)
        return Input(role="base", path=path.resolve(), sha256=None, origin=str(path))
    return _local_file("base", path, sha256, where=where)


def local_k3s(path: Path, sha256: str | None, *, where: str) -> Input:
    return _local_file("k3s", path, sha256, where=where)


def _check_file(path: Path, where: str) -> None:
    if not path.exists():
        raise UserError(f"{where}: {path} does not exist")
    if not path.is_file():
        raise UserError(f"{where}: {path} is not a regular file")


def _local_file(role: str, path: Path, sha256: str | None, *, where: str) -> Input:
    _check_file(path, where)
    try:
        digest = sha256_of(path)
    except OSError as exc:
        raise UserError(f"{where}: {path}: {exc.strerror}") from None
    if sha256 is not None and digest != sha256.lower():
        raise UserError(
            f"{where}: sha256 mismatch for {path}: expected {sha256.lower()}, got {digest}"
        )
    return Input(role=role, path=path.resolve(), sha256=digest, origin=str(path))
