"""The catalog (images/*.yaml) and K3s releases, resolved to concrete, checksummed URLs.

Raspberry Pi OS (and Ubuntu) entries resolve through the JSON OS list that
Raspberry Pi Imager reads, so "latest" stays current and every download has a
published sha256; an entry can also pin a url + sha256; `pifleet-base` entries
are built locally by `pifleet base`. K3s versions resolve to the GitHub
release assets and their checksum files; a channel resolves through the K3s
channel server.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urljoin

from builder.sources.fetch import fetch_text, final_url
from builder.util import bundled
from builder.util.errors import UserError
from builder.util.yamlfile import read_yaml

CATALOG_DIR = bundled.data("images")
IMAGER_OS_LIST = "https://downloads.raspberrypi.com/os_list_imagingutility_v4.json"
_ENTRY_KEYS = {
    "name",
    "description",
    "arch",
    "flavor",
    "source",
    "os_list",
    "match",
    "url",
    "sha256",
}
_K3S_ASSETS = {
    "arm64": ("k3s-arm64", "sha256sum-arm64.txt", "k3s-airgap-images-arm64.tar.zst"),
    "armhf": ("k3s-armhf", "sha256sum-arm.txt", "k3s-airgap-images-arm.tar.zst"),
}


@dataclass(frozen=True)
class Entry:
    name: str
    description: str
    arch: str
    flavor: str
    source: str  # imager | pinned | pifleet-base
    os_list: str | None = None
    match: str | None = None  # regex on the Imager entry's url
    url: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Resolved:
    name: str
    url: str
    sha256: str  # of the download
    extract_sha256: str | None = None  # of the decompressed image, when published
    extract_size: int | None = None
    release_date: str | None = None


def catalog_dirs() -> list[Path]:
    """The bundled catalog, then $PIFLEET_CATALOG_DIR (site entries; same name wins)."""
    extra = os.environ.get("PIFLEET_CATALOG_DIR")
    return [CATALOG_DIR, *([Path(extra)] if extra else [])]


def load() -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    for directory in catalog_dirs():
        for path in sorted(directory.glob("*.yaml")):
            entry = _entry(path)
            entries[entry.name] = entry
    return entries


def _entry(path: Path) -> Entry:
    raw = read_yaml(path, what="catalog entry")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping")
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        raise UserError(f"{path}: {unknown[0]}: unknown key")
    for key in ("name", "arch", "source"):
        if not isinstance(raw.get(key), str):
            raise UserError(f"{path}: {key}: required")
    if raw["source"] not in ("imager", "pinned", "pifleet-base"):
        raise UserError(
            f"{path}: source: must be imager, pinned or pifleet-base, got {raw['source']!r}"
        )
    if raw["source"] == "pinned" and not (
        raw.get("url") and re.fullmatch(r"[0-9a-f]{64}", str(raw.get("sha256", "")))
    ):
        raise UserError(f"{path}: a pinned entry needs url and sha256")
    match = raw.get("match")
    return Entry(
        name=raw["name"],
        description=str(raw.get("description") or raw["name"]),
        arch=raw["arch"],
        flavor=raw.get("flavor", ""),
        source=raw["source"],
        os_list=raw.get("os_list"),
        match=match.get("url") if isinstance(match, dict) else match,
        url=raw.get("url"),
        sha256=raw.get("sha256"),
    )


def entry(name: str, arch: str, where: str) -> Entry:
    entries = load()
    if name not in entries:
        raise UserError(f"{where}: {name!r} is not in the catalog (see `pifleet images`)")
    found = entries[name]
    if found.arch != arch:
        raise UserError(f"{where}: {name} is {found.arch} but the config's arch is {arch}")
    return found


def resolve(found: Entry, os_list: str | None, where: str) -> Resolved:
    if found.source == "pinned":
        assert found.url and found.sha256
        return Resolved(found.name, found.url, found.sha256)
    list_url = os_list or found.os_list or IMAGER_OS_LIST
    pattern = re.compile(found.match or re.escape(found.name))
    item = _find(list_url, pattern, where, depth=0)
    if item is None:
        raise UserError(f"{where}: no image matching {pattern.pattern!r} in the OS list {list_url}")
    sha = item.get("image_download_sha256")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise UserError(
            f"{where}: the OS list entry for {item.get('url')} has no image_download_sha256"
        )
    return Resolved(
        name=found.name,
        url=item["url"],
        sha256=sha,
        extract_sha256=item.get("extract_sha256"),
        extract_size=item.get("extract_size"),
        release_date=item.get("release_date"),
    )


def _find(list_url: str, pattern: re.Pattern[str], where: str, depth: int) -> dict[str, Any] | None:
    """The OS list item whose url matches, searching subitems and subitems_url lists."""
    try:
        doc = json.loads(fetch_text(list_url, where))
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: {list_url}: not a JSON OS list ({exc})") from None
    items = doc.get("os_list", []) if isinstance(doc, dict) else doc
    todo = list(items) if isinstance(items, list) else []
    while todo:
        item = todo.pop(0)
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("url"), str) and pattern.search(item["url"]):
            return item
        todo.extend(item.get("subitems", []) or [])
        sub = item.get("subitems_url")
        if isinstance(sub, str) and depth < 3:
            found = _find(urljoin(list_url, sub), pattern, where, depth + 1)
            if found is not None:
                return found
    return None


def k3s_version(version: str | None, channel: str | None, channel_url: str, where: str) -> str:
    """The release a config names: its version, or what the channel server points to now."""
    if version:
        return version
    target = final_url(f"{channel_url.rstrip('/')}/{channel or 'stable'}", where)
    found = re.search(r"(v\d+\.\d+\.\d+(?:-rc\d+)?\+k3s\d+)$", unquote(target.rstrip("/")))
    if found is None:
        raise UserError(f"{where}: the K3s channel {channel} resolved to {target}, not a release")
    return found.group(1)


def k3s_assets(release_url: str, version: str, arch: str) -> tuple[str, str, str]:
    """URLs of (binary, checksum file, air-gap images) for `arch`; armhf never gets arm64 assets."""
    binary, sums, airgap = _K3S_ASSETS[arch]
    base = f"{release_url.rstrip('/')}/{quote(version, safe='')}"
    return f"{base}/{binary}", f"{base}/{sums}", f"{base}/{airgap}"


def checksum_for(sums_text: str, asset: str, where: str) -> str:
    for line in sums_text.splitlines():
        fields = line.split()
        if (
            len(fields) == 2
            and fields[1].lstrip("*") == asset
            and re.fullmatch(r"[0-9a-f]{64}", fields[0])
        ):
            return fields[0]
    raise UserError(f"{where}: the release's checksum file lists no {asset}")


def command(args: object) -> int:
    """`pifleet images`: the catalog."""
    for found in sorted(load().values(), key=lambda e: e.name):
        how = {"imager": "via the Raspberry Pi Imager OS list", "pinned": "pinned url + sha256",
               "pifleet-base": "built locally by `pifleet base`"}[found.source]  # fmt: skip
        print(f"{found.name:36} {found.arch:6} {found.description} ({how})")
    return 0
