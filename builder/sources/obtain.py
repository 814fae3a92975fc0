"""Where the base image and K3s come from: catalog names, URLs, releases or local files,
all verified, downloaded once, and turned into files the build can read.

Compressed bases are decompressed once into `<cache>/bases/<sha256 of the
download>/` (sparse), checked against the published `extract_sha256` when
there is one, and never written to afterwards. The manifest records the sha256
of the file the user named or downloaded (the one they can check), so a
decompressed base is never hashed again.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from builder.config.model import BaseSource, K3sSource, KubernetesBinaries
from builder.sources import compress
from builder.sources.digests import sha256_of
from builder.util.atomic import replace_when_done
from builder.util.cache import cache_dir
from builder.util.console import progress
from builder.util.errors import UserError
from builder.util.space import reported_full

log = logging.getLogger("pifleet.sources")


@dataclass(frozen=True)
class Input:
    """A file that went into the build, as the manifest records it."""

    role: str  # "base", "k3s", "airgap-images"
    path: Path
    sha256: str | None  # None until the build has hashed it (see builder.build)
    origin: str  # catalog name, URL or the path the user gave
    version: str | None = None


def obtain_base(src: BaseSource, arch: str, *, where: str) -> Input:
    if src.path is not None:
        return local_base(src.path, src.sha256, where=f"{where}.path")
    # Downloads only: requests and the catalog cost a tenth of a second to import.
    from builder.sources import catalog
    from builder.sources.fetch import fetch

    if src.url is not None:
        assert src.sha256 is not None  # the config requires it
        download = fetch(src.url, src.sha256, where=f"{where}.url", pinned=True)
        return _raw_base(download, src.sha256, None, origin=src.url, where=where)
    assert src.name is not None
    entry = catalog.entry(src.name, arch, where)
    if entry.source == "pifleet-base":
        from builder.bases.debian import ensure_base

        path = ensure_base(arch)
        return Input(role="base", path=path, sha256=None, origin=entry.name)
    resolved = catalog.resolve(entry, src.os_list, where)
    log.info(
        "base %s resolves to %s (%s)", entry.name, resolved.url, resolved.release_date or "undated"
    )
    download = fetch(resolved.url, resolved.sha256, where=where)
    found = _raw_base(
        download, resolved.sha256, resolved.extract_sha256, origin=entry.name, where=where
    )
    return Input("base", found.path, found.sha256, found.origin, version=resolved.release_date)


def local_base(path: Path, sha256: str | None, *, where: str) -> Input:
    """A base from disk. A raw .img without an expected sha256 is hashed by the build, while it
    copies (the digest is only for the manifest)."""
    _check_file(path, where)
    if compress.kind(path) != "img":
        digest = _verified(path, sha256, where)
        return _raw_base(path, digest, None, origin=str(path), where=where)
    if sha256 is None:
        return Input(role="base", path=path.resolve(), sha256=None, origin=str(path))
    return Input("base", path.resolve(), _verified(path, sha256, where), str(path))


def _raw_base(
    download: Path, digest: str, extract_sha256: str | None, *, origin: str, where: str
) -> Input:
    """`download` as a raw image: itself when raw, else decompressed once into the cache."""
    if compress.kind(download) == "img":
        return Input("base", download, digest, origin)
    name = download.name
    for suffix in compress.COMPRESSED:
        name = name.removesuffix(suffix)
    digest = digest.lower()
    raw = cache_dir("bases") / digest / (name if name.endswith(".img") else name + ".img")
    if raw.exists():
        return Input("base", raw, digest, origin)
    raw.parent.mkdir(parents=True, exist_ok=True)
    log.info("decompressing %s", download.name)
    try:
        with (
            reported_full(raw.parent, f"the decompressed base {raw.name}"),
            replace_when_done(raw, 0o444) as tmp,
            progress("decompressing", None) as bar,
        ):
            raw_digest = compress.decompress(
                download, tmp, bar.advance, hashed=bool(extract_sha256)
            )
            if extract_sha256 and raw_digest != extract_sha256.lower():
                raise UserError(
                    f"{where}: the decompressed image's sha256 is {raw_digest}, not the published {extract_sha256}"
                )
    except BaseException:
        with contextlib.suppress(OSError):
            raw.parent.rmdir()  # only when empty: no cache/bases/<sha>/ left behind
        raise
    return Input("base", raw, digest, origin)


def obtain_k3s(src: K3sSource, arch: str, *, where: str) -> Input:
    if src.binary is not None:
        return local_k3s(src.binary, src.sha256, where=f"{where}.binary")
    from builder.sources import catalog
    from builder.sources.fetch import fetch, fetch_text

    version = catalog.k3s_version(src.version, src.channel, src.channel_url, where)
    binary_url, sums_url, _airgap = catalog.k3s_assets(src.release_url, version, arch)
    sums = fetch_text(sums_url, where)
    asset = binary_url.rsplit("/", 1)[1]
    path = fetch(binary_url, catalog.checksum_for(sums, asset, where), name=asset, where=where)
    return Input(
        "k3s", path, sha256_of(path), f"{src.release_url}/{version}/{asset}", version=version
    )


def local_k3s(path: Path, sha256: str | None, *, where: str) -> Input:
    _check_file(path, where)
    return Input("k3s", path.resolve(), _verified(path, sha256, where), str(path))


def obtain_kubernetes(
    binaries: KubernetesBinaries | None, arch: str, where: str
) -> tuple[Input, ...]:
    """A kubeadm fleet's binaries: three local files, each checked against its sha256 when
    given; or a release's, downloaded and checked against the release's .sha256 files."""
    if binaries is None:
        return ()
    if binaries.version is None:
        sums = dict(binaries.sha256)
        found = []
        for name, path in binaries.files():
            at = f"{where}: kubernetes.{name}"
            _check_file(path, at)
            digest = _verified(path, sums.get(name), at)
            found.append(Input(name, path.resolve(), digest, str(path)))
        return tuple(found)
    from builder.sources.fetch import fetch, fetch_text

    machine = {"arm64": "arm64", "armhf": "arm"}[arch]
    base = f"{binaries.release_url}/{binaries.version}/bin/linux/{machine}"
    found = []
    for name in ("kubeadm", "kubelet", "kubectl"):
        at = f"{where}: kubernetes.version"
        text = fetch_text(f"{base}/{name}.sha256", at).split()
        if not text or not re.fullmatch(r"[0-9a-fA-F]{64}", text[0]):
            raise UserError(f"{at}: {base}/{name}.sha256 is not a sha256")
        path = fetch(f"{base}/{name}", text[0], name=name, where=at)
        found.append(Input(name, path, text[0].lower(), f"{base}/{name}", version=binaries.version))
    return tuple(found)


def obtain_airgap(src: K3sSource, arch: str, k3s: Input, *, where: str) -> Input | None:
    if src.airgap_path is not None:
        _check_file(src.airgap_path, f"{where}.airgap_images")
        digest = sha256_of(src.airgap_path)
        return Input("airgap-images", src.airgap_path.resolve(), digest, str(src.airgap_path))
    if not src.airgap_images:
        return None
    if k3s.version is None:
        raise UserError(
            f"{where}.airgap_images: true needs k3s.version or k3s.channel (or give a file)"
        )
    from builder.sources import catalog
    from builder.sources.fetch import fetch, fetch_text

    _binary, sums_url, airgap_url = catalog.k3s_assets(src.release_url, k3s.version, arch)
    asset = airgap_url.rsplit("/", 1)[1]
    digest = catalog.checksum_for(fetch_text(sums_url, where), asset, where)
    path = fetch(airgap_url, digest, name=asset, where=where)
    return Input("airgap-images", path, digest, airgap_url, version=k3s.version)


def _check_file(path: Path, where: str) -> None:
    if not path.exists():
        raise UserError(f"{where}: {path} does not exist")
    if not path.is_file():
        raise UserError(f"{where}: {path} is not a regular file")


def _verified(path: Path, sha256: str | None, where: str) -> str:
    try:
        digest = sha256_of(path)
    except OSError as exc:
        raise UserError(f"{where}: {path}: {exc.strerror}") from None
    if sha256 is not None and digest != sha256.lower():
        raise UserError(
            f"{where}: sha256 mismatch for {path}: expected {sha256.lower()}, got {digest}"
        )
    return digest


def fetch_command(args: argparse.Namespace) -> int:
    """`pifleet fetch CONFIG`: download and verify everything a build needs, for offline use."""
    from builder.config.fleet import load

    config = load(Path(args.config))
    where = str(config.source)
    base = obtain_base(config.base, config.arch, where=f"{where}: base")
    k3s = obtain_k3s(config.k3s, config.arch, where=f"{where}: k3s")
    airgap = obtain_airgap(config.k3s, config.arch, k3s, where=f"{where}: k3s")
    for item in (base, k3s, airgap):
        if item is not None:
            version = f" {item.version}" if item.version else ""
            print(f"{item.role:14} {item.origin}{version}\n{'':14} -> {item.path}")
    return 0
