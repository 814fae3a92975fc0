"""Distributable outputs of `pifleet build`: .img.xz, .img.zst, .bmap, SHA256SUMS and the
Raspberry Pi Imager OS list, checked with the real xz, zstd, sha256sum and bmaptool.

One build (all formats, bmap on) is shared by the module; every expected value is
computed here independently of builder/ (hashlib, SEEK_DATA/SEEK_HOLE, debugfs, sfdisk).
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from tests.conftest import TEST_TOKEN, fleet_yaml, pifleet
from tests.image_read import debugfs, sha256
from tests.layouts import MIB, TRIXIE, elf_for, make_pi_image

NAME = "edge-fleet"
EPOCH = 1767225600  # 2026-01-01T00:00:00Z
BLOCK = 4096
SECRETS = (TEST_TOKEN.encode(), TEST_TOKEN.split("::")[1].encode(), b"s3cr3t-t0ken")
DECOMPRESSORS = {"img.xz": "xz", "img.zst": "zstd"}
_CHUNK = 8 * MIB


@dataclass(frozen=True)
class Built:
    dir: Path
    cache: Path
    proc: subprocess.CompletedProcess[str]

    @property
    def out(self) -> Path:
        return self.dir / "out"

    def output(self, suffix: str) -> Path:
        return self.out / f"{NAME}.{suffix}"


def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (tools/setup.sh installs it)")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """One build with every output format and a .bmap, logged at debug level."""
    need("xz", "zstd")
    d = tmp_path_factory.mktemp("outputs")
    # Some incompressible file content, so the image has real data ranges beyond metadata.
    make_pi_image(d / "base.img", TRIXIE, "arm64", fill=8 * MIB)
    token = d / "token"
    token.write_text(TEST_TOKEN + "\n")
    token.chmod(0o600)
    (d / "fleet.yaml").write_text(
        fleet_yaml(output="output: {dir: out, formats: [img, img.xz, img.zst], bmap: true}")
    )
    env = {"SOURCE_DATE_EPOCH": str(EPOCH), "PIFLEET_CACHE": str(d / "cache")}
    proc = pifleet("-v", "build", "fleet.yaml", cwd=d, env=env)
    assert proc.returncode == 0, proc.stderr
    return Built(d, d / "cache", proc)


def decompressed_sha256(tool: str, path: Path) -> tuple[str, int]:
    """sha256 and size of what the real CLI decompresses `path` to."""
    digest, size = hashlib.sha256(), 0
    with subprocess.Popen([tool, "-dc", str(path)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    assert proc.returncode == 0, f"{tool} -dc {path.name} failed"
    return digest.hexdigest(), size


def data_extents(path: Path) -> list[tuple[int, int]]:
    """(start, end) byte extents holding data, straight from SEEK_DATA/SEEK_HOLE."""
    extents = []
    with open(path, "rb") as f:
        fd, size, pos = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                assert exc.errno == errno.ENXIO
                break
            pos = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, pos))
    return extents


def block_ranges(extents: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Inclusive 4 KiB block ranges covering `extents`, adjacent ones merged (bmaptool's view)."""
    ranges: list[tuple[int, int]] = []
    for start, end in extents:
        first, last = start // BLOCK, (end - 1) // BLOCK
        if ranges and first <= ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], last))
        else:
            ranges.append((first, last))
    return ranges


def occurrences(path: Path, needle: bytes) -> list[int]:
    """Byte offsets of `needle` in the data of `path` (holes cannot hold it)."""
    found = set()
    with open(path, "rb") as f:
        for start, end in data_extents(path):
            pos = start
            while pos < end:
                chunk = os.pread(f.fileno(), min(_CHUNK, end - pos) + len(needle) - 1, pos)
                at = chunk.find(needle)
                while at != -1:
                    found.add(pos + at)
                    at = chunk.find(needle, at + 1)
                pos += _CHUNK
    return sorted(found)


def partition_offsets(image: Path) -> list[int]:
    table = subprocess.run(
        ["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True
    )
    return [p["start"] * 512 for p in json.loads(table.stdout)["partitiontable"]["partitions"]]


def file_extents_in_image(image: Path, path: str) -> list[tuple[int, int]]:
    """Byte extents of the image holding the data blocks of `path` in the root filesystem."""
    root = partition_offsets(image)[1]
    block_size = int(
        next(
            line.split(":")[1]
            for line in debugfs(image, "stats", offset=root).splitlines()
            if line.startswith("Block size:")
        )
    )
    blocks = [int(b) for b in debugfs(image, f"blocks {path}", offset=root).split()]
    assert blocks, f"{path} has no data blocks"
    return [(root + b * block_size, root + (b + 1) * block_size) for b in blocks]


def parse_bmap(path: Path) -> ET.Element:
    data = path.read_bytes()
    root = ET.fromstring(data)
    stated = text(root, "BmapFileChecksum")
    zeroed = data.replace(stated.encode(), b"0" * len(stated), 1)
    assert hashlib.sha256(zeroed).hexdigest() == stated, "BmapFileChecksum is wrong"
    return root


def text(root: ET.Element, tag: str) -> str:
    node = root.find(tag)
    assert node is not None and node.text is not None, f"<{tag}> missing"
    return node.text.strip()


def bmap_ranges(root: ET.Element) -> Iterator[tuple[int, int, str]]:
    for node in root.iter("Range"):
        first, _, last = (node.text or "").strip().partition("-")
        yield int(first), int(last or first), node.get("chksum", "")


def bmaptool_copy(built: Built, source: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bmaptool", "copy", "--bmap", str(built.output("img.bmap")), str(source), str(dest)],
        capture_output=True,
        text=True,
        timeout=600,
    )


# --- compressed images -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["img.xz", "img.zst"])
def test_compressed_image_passes_its_tool_and_decompresses_to_the_image(
    built: Built, fmt: str
) -> None:
    tool = DECOMPRESSORS[fmt]
    path = built.output(fmt)
    integrity = subprocess.run([tool, "-t", str(path)], capture_output=True, text=True)
    assert integrity.returncode == 0, integrity.stderr
    image = built.output("img")
    assert decompressed_sha256(tool, path) == (sha256(image), image.stat().st_size)
    assert path.stat().st_size < image.stat().st_size // 10, "the image is mostly zeros"


def test_xz_is_multi_block_so_imager_and_xz_decompress_in_parallel(built: Built) -> None:
    listing = subprocess.run(
        ["xz", "--robot", "--list", str(built.output("img.xz"))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fields = next(line for line in listing.splitlines() if line.startswith("file\t")).split("\t")
    streams, blocks, uncompressed = int(fields[1]), int(fields[2]), int(fields[4])
    assert uncompressed == built.output("img").stat().st_size
    assert streams == 1
    if (os.cpu_count() or 1) > 1:
        assert blocks > 1, "compressed single-threaded: one block, no parallel decompression"


# --- SHA256SUMS ----------------------------------------------------------------------------


def test_sha256sums_lists_every_output_and_sha256sum_accepts_it(built: Built) -> None:
    need("sha256sum")
    lines = (built.out / "SHA256SUMS").read_text().splitlines()
    listed = dict(reversed(line.split("  ", 1)) for line in lines)
    on_disk = {p.name for p in built.out.iterdir()} - {"SHA256SUMS"}
    assert set(listed) == on_disk
    assert len(lines) == len(listed), "a file is listed twice"
    for name, digest in listed.items():
        assert digest == sha256(built.out / name), name
    check = subprocess.run(
        ["sha256sum", "--check", "--strict", "SHA256SUMS"],
        cwd=built.out,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert sorted(check.stdout.splitlines()) == sorted(f"{name}: OK" for name in on_disk)


def test_manifest_records_every_image_output(built: Built) -> None:
    manifest = json.loads((built.out / "manifest.json").read_text())
    recorded = {o["file"]: o["sha256"] for o in manifest["outputs"]}
    for suffix in ("img", "img.bmap", "img.xz", "img.zst"):
        path = built.output(suffix)
        assert recorded[path.name] == sha256(path), suffix


# --- .bmap ---------------------------------------------------------------------------------


def test_bmap_header_and_ranges_match_the_image_data(built: Built) -> None:
    image = built.output("img")
    size = image.stat().st_size
    root = parse_bmap(built.output("img.bmap"))
    assert root.tag == "bmap" and root.get("version") == "2.0"
    assert int(text(root, "ImageSize")) == size
    assert int(text(root, "BlockSize")) == BLOCK
    assert int(text(root, "BlocksCount")) == -(-size // BLOCK)
    assert text(root, "ChecksumType") == "sha256"

    expected = block_ranges(data_extents(image))
    mapped = list(bmap_ranges(root))
    assert [(first, last) for first, last, _ in mapped] == expected
    count = sum(last - first + 1 for first, last in expected)
    assert int(text(root, "MappedBlocksCount")) == count
    assert 0 < count < int(text(root, "BlocksCount")), "a sparse image has holes"
    with open(image, "rb") as f:
        for first, last, chksum in mapped:
            data = os.pread(f.fileno(), (last + 1 - first) * BLOCK, first * BLOCK)
            assert hashlib.sha256(data).hexdigest() == chksum, f"range {first}-{last}"


@pytest.mark.parametrize("source", ["img", "img.xz", "img.zst"])
def test_bmaptool_copy_writes_the_image(built: Built, tmp_path: Path, source: str) -> None:
    need("bmaptool")
    card = tmp_path / "card.img"
    copied = bmaptool_copy(built, built.output(source), card)
    assert copied.returncode == 0, copied.stderr
    assert "using bmap file" in copied.stderr
    assert "checksum" not in copied.stderr.lower()  # no "verification disabled" warning
    image = built.output("img")
    assert card.stat().st_size == image.stat().st_size
    cmp = subprocess.run(["cmp", str(image), str(card)], capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr


def test_bmaptool_verifies_the_range_checksums(built: Built, tmp_path: Path) -> None:
    need("bmaptool")
    root = parse_bmap(built.output("img.bmap"))
    first, last, _ = max(bmap_ranges(root), key=lambda r: r[1] - r[0])
    corrupt = tmp_path / "corrupt.img"
    subprocess.run(["cp", "--sparse=always", str(built.output("img")), str(corrupt)], check=True)
    with open(corrupt, "r+b") as f:
        at = (first + last) // 2 * BLOCK + 123
        (old,) = os.pread(f.fileno(), 1, at)
        os.pwrite(f.fileno(), bytes([old ^ 0xFF]), at)
    copied = bmaptool_copy(built, corrupt, tmp_path / "card.img")
    assert copied.returncode != 0
    assert f"checksum mismatch for blocks range {first}-{last}" in copied.stderr


# --- Raspberry Pi Imager OS list -----------------------------------------------------------


# Imager's OS list entry rules (doc/json-schema/os-list-schema.json in raspberrypi/rpi-imager, and
# its oslistmodel.cpp), restated here; the manifest is an OS list with one entry.
REQUIRED = {
    "name": str, "description": str, "icon": str, "url": str, "extract_size": int,
    "extract_sha256": str, "image_download_size": int, "release_date": str, "devices": list,
}  # fmt: skip
INIT_FORMATS = {"", "none", "systemd", "cloudinit", "cloudinit-rpi", "rpi-preseed"}
CAPABILITIES = {"rpi_connect", "secure_boot", "passwordless_sudo", "i2c", "spi", "onewire",
                "serial", "usb_otg"}  # fmt: skip


def test_imager_manifest_entry_describes_the_download(built: Built) -> None:
    path = built.out / f"{NAME}.rpi-imager-manifest"
    assert not (built.out / f"{NAME}.os_list.json").exists(), "the manifest replaces it"
    doc = json.loads(path.read_text())
    assert set(doc) == {"os_list"}, "a local manifest: no top-level imager object needed"
    (entry,) = doc["os_list"]
    for key, kind in REQUIRED.items():
        assert isinstance(entry[key], kind), key
    assert entry["init_format"] in INIT_FORMATS and set(entry["capabilities"]) <= CAPABILITIES
    assert entry["capabilities"] == sorted(entry["capabilities"])
    assert entry["architecture"] in ("armel", "armhf", "armv8")
    image = built.output("img")
    assert entry["url"].startswith("file:///")
    download = Path(entry["url"].removeprefix("file://"))
    assert download == built.output("img.xz").resolve(), "Imager's own format is preferred"
    assert entry["bmap_url"] == built.output("img.bmap").resolve().as_uri()
    assert entry["extract_size"] == image.stat().st_size
    assert entry["extract_sha256"] == sha256(image)
    assert entry["image_download_size"] == download.stat().st_size
    assert entry["image_download_sha256"] == sha256(download)
    assert entry["release_date"] == datetime.datetime.fromtimestamp(EPOCH, datetime.UTC).strftime(
        "%Y-%m-%d"
    )
    assert entry["init_format"] == "cloudinit-rpi"  # the layout is Raspberry Pi OS Trixie
    assert {"i2c", "spi", "serial"} <= set(entry["capabilities"])
    assert entry["devices"] and all(d.endswith("-64bit") for d in entry["devices"])
    assert "pi4-64bit" in entry["devices"] and "pi5-64bit" in entry["devices"]


def test_sbom_validates_with_the_spdx_tools(built: Built) -> None:
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    path = built.output("spdx.json")
    document = parse_file(str(path))
    assert validate_full_spdx_document(document, "SPDX-2.3") == []
    raw = json.loads(path.read_text())
    by_name = {p["name"]: p for p in raw["packages"]}
    # every installed dpkg package of the layout (tests/layouts.py), and not the removed one
    for name, version in TRIXIE.packages:
        assert by_name[name]["versionInfo"] == version
        purl = by_name[name]["externalRefs"][0]["referenceLocator"]
        assert purl.startswith(f"pkg:deb/debian/{name}@") and "distro=debian-13" in purl
    assert "cloud-guest-utils" not in by_name
    k3s = next(p for p in raw["packages"] if p["SPDXID"] == "SPDXRef-K3s")
    assert k3s["checksums"][0]["checksumValue"] == sha256(elf_for("arm64"))
    base = next(p for p in raw["packages"] if p["SPDXID"] == "SPDXRef-Base")
    assert base["checksums"][0]["checksumValue"] == sha256(built.dir / "base.img")
    image = next(p for p in raw["packages"] if p["SPDXID"] == "SPDXRef-Image")
    assert image["checksums"][0]["checksumValue"] == sha256(built.output("img"))
    assert by_name["pifleet-firstboot"]["versionInfo"]
    sums = (built.out / "SHA256SUMS").read_text()
    assert f"{sha256(path)}  {NAME}.spdx.json" in sums.splitlines()


# --- compressed bases ----------------------------------------------------------------------


@pytest.mark.parametrize("tool,suffix", [("xz", "xz"), ("zstd", "zst")])
def test_compressed_base_builds_the_same_image_and_is_decompressed_once(
    fleet_dir: Path, tool: str, suffix: str
) -> None:
    need(tool)
    base = fleet_dir / "base.img"
    # The fastest level: what is tested is pifleet's decompression, not the packing.
    level = "-0" if tool == "xz" else "-1"
    subprocess.run([tool, level, "-T0", "-q", "-k", str(base)], check=True)
    packed = fleet_dir / f"base.img.{suffix}"
    packed_sum = sha256(packed)
    env = {"SOURCE_DATE_EPOCH": str(EPOCH), "PIFLEET_CACHE": str(fleet_dir / "cache")}
    assert pifleet("build", "fleet.yaml", "-o", "raw", cwd=fleet_dir, env=env).returncode == 0
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(base=f"base: {{path: {packed.name}}}"))
    for out in ("first", "again"):
        proc = pifleet("build", "fleet.yaml", "-o", out, cwd=fleet_dir, env=env)
        assert proc.returncode == 0, proc.stderr
        assert ("decompressing" in proc.stderr) == (out == "first"), "decompressed once"
        image = fleet_dir / out / f"{NAME}.img"
        assert sha256(image) == sha256(fleet_dir / "raw" / f"{NAME}.img")
        manifest = json.loads((image.parent / "manifest.json").read_text())
        (recorded,) = [i for i in manifest["inputs"] if i["role"] == "base"]
        assert recorded["sha256"] == packed_sum, "the manifest names the file the user gave"
    assert sha256(packed) == packed_sum, "the base is only read"
    (cached,) = (fleet_dir / "cache" / "bases" / packed_sum).iterdir()
    assert cached.stat().st_mode & 0o777 == 0o444
    assert cached.stat().st_blocks * 512 < cached.stat().st_size // 4, "zeros became holes"
    assert sha256(cached) == sha256(base)


# --- secrets -------------------------------------------------------------------------------


def test_token_only_in_the_image_token_file(built: Built) -> None:
    output = (built.proc.stdout + built.proc.stderr).encode()
    for secret in SECRETS:
        assert secret not in output
    image = built.output("img")
    allowed = file_extents_in_image(image, "/etc/pifleet/token")
    found = occurrences(image, TEST_TOKEN.encode())
    assert found, "the image carries the token in /etc/pifleet/token"
    for at in found:
        assert any(start <= at < end for start, end in allowed), f"token at byte {at}"
    # The compressed images decompress to the image (tested above); everything else is clean.
    others = [
        p
        for p in [*built.out.iterdir(), *built.cache.rglob("*")]
        if p.is_file() and not p.name.endswith((".img", ".img.xz", ".img.zst"))
    ]
    assert any(p.name == "SHA256SUMS" for p in others)
    for path in others:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret not in data, path


def test_outputs_carrying_the_token_are_private(built: Built) -> None:
    modes = {p.name: p.stat().st_mode & 0o777 for p in built.out.iterdir()}
    assert not [name for name in modes if name.startswith(".")], "temporary files left behind"
    for suffix in ("img", "img.xz", "img.zst"):
        assert modes.pop(f"{NAME}.{suffix}") == 0o600, suffix
    # Its .bmap, manifest, OS list and SHA256SUMS would confirm guesses: the image's mode.
    assert set(modes.values()) == {0o600}, modes
