"""Catalog, downloads and K3s releases against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.config.model import BaseSource, K3sSource
from builder.sources import compress
from builder.sources.obtain import obtain_airgap, obtain_base, obtain_k3s
from builder.util.errors import BuildError, UserError
from tests.http_fixture import AssetServer
from tests.layouts import elf_for

MIB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def raw_image() -> bytes:
    """4 MiB: an MBR sector, some data, mostly zeros (which must come out as holes)."""
    data = bytearray(4 * MIB)
    data[510:512] = b"\x55\xaa"
    data[MIB : MIB + 8192] = b"pifleet!" * 1024
    return bytes(data)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIFLEET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIFLEET_FETCH_ATTEMPTS", "2")
    monkeypatch.setenv("PIFLEET_CATALOG_DIR", str(tmp_path / "catalog"))
    (tmp_path / "catalog").mkdir()


@pytest.fixture
def server() -> Iterator[AssetServer]:
    with AssetServer() as srv:
        yield srv


def imager_list(server: AssetServer, xz: bytes, raw: bytes) -> None:
    """An OS list shaped like Raspberry Pi Imager's, with a nested list behind subitems_url."""
    entry = {"name": "Raspberry Pi OS Lite (64-bit)", "url": f"{server.url}/images/2025-10-01-raspios-trixie-arm64-lite.img.xz",
             "image_download_sha256": sha(xz), "image_download_size": len(xz), "extract_sha256": sha(raw),
             "extract_size": len(raw), "release_date": "2025-10-01", "devices": ["pi5-64bit"]}  # fmt: skip
    old = dict(
        entry,
        url=f"{server.url}/images/2025-05-13-raspios-bookworm-arm64-lite.img.xz",
        release_date="2025-05-13",
    )
    server.files["/os_list.json"] = json.dumps(
        {
            "imager": {},
            "os_list": [
                {"name": "Raspberry Pi OS (other)", "subitems_url": "other.json"},
                {"name": "Use custom"},
            ],
        }
    ).encode()
    server.files["/other.json"] = json.dumps([old, entry]).encode()
    server.files["/images/2025-10-01-raspios-trixie-arm64-lite.img.xz"] = xz


def catalog_entry(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / "catalog" / f"{name}.yaml").write_text(f"name: {name}\n{text}")


def test_latest_through_the_imager_list_and_cache_hit(server: AssetServer, tmp_path: Path) -> None:
    raw = raw_image()
    xz = lzma.compress(raw)
    imager_list(server, xz, raw)
    catalog_entry(
        tmp_path,
        "test-trixie",
        "arch: arm64\nsource: imager\nmatch: {url: 'raspios-trixie-arm64-lite\\.img\\.xz$'}\n",
    )
    got = obtain_base(
        BaseSource(name="test-trixie", os_list=f"{server.url}/os_list.json"),
        "arm64",
        where="f: base",
    )
    assert got.path.read_bytes() == raw and got.version == "2025-10-01"
    assert got.path.stat().st_blocks * 512 < MIB, "zero blocks became holes"
    image_requests = server.count("/images/2025-10-01-raspios-trixie-arm64-lite.img.xz")
    again = obtain_base(
        BaseSource(name="test-trixie", os_list=f"{server.url}/os_list.json"),
        "arm64",
        where="f: base",
    )
    assert again.path == got.path
    assert (
        server.count("/images/2025-10-01-raspios-trixie-arm64-lite.img.xz") == image_requests == 1
    )


def test_pinned_entry_and_arch_mismatch(server: AssetServer, tmp_path: Path) -> None:
    raw = raw_image()
    zst = subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True, check=True).stdout
    server.files["/x.img.zst"] = zst
    catalog_entry(
        tmp_path,
        "pinned",
        f"arch: arm64\nsource: pinned\nurl: {server.url}/x.img.zst\nsha256: {sha(zst)}\n",
    )
    assert obtain_base(BaseSource(name="pinned"), "arm64", where="f: base").path.read_bytes() == raw
    with pytest.raises(UserError, match="pinned is arm64 but the config's arch is armhf"):
        obtain_base(BaseSource(name="pinned"), "armhf", where="f: base")


def test_interrupted_download_resumes(server: AssetServer) -> None:
    payload = bytes(range(256)) * 40000
    server.files["/big.img"] = payload
    server.drop_once["/big.img"] = 3 * 1024 * 1024 // 4
    got = obtain_base(
        BaseSource(url=f"{server.url}/big.img", sha256=sha(payload)), "arm64", where="f: base"
    )
    assert got.path.read_bytes() == payload
    ranges = [r.range for r in server.requests if r.path == "/big.img"]
    assert ranges[0] is None and ranges[1] == f"bytes={3 * 1024 * 1024 // 4}-"


def test_sha256_mismatch_never_enters_the_cache(server: AssetServer, tmp_path: Path) -> None:
    server.files["/evil.img"] = b"x" * 100000
    with pytest.raises(UserError, match="sha256 mismatch") as info:
        obtain_base(
            BaseSource(url=f"{server.url}/evil.img", sha256="a" * 64), "arm64", where="f: base"
        )
    assert "\n" not in str(info.value)
    cache = tmp_path / "cache" / "downloads"
    assert not list((cache / "sha256").rglob("*.img")) and not list((cache / "partial").glob("*"))


def test_404_and_refused_are_one_clear_line(server: AssetServer) -> None:
    with pytest.raises(UserError) as info:
        obtain_base(
            BaseSource(url=f"{server.url}/missing.img.xz", sha256="b" * 64),
            "arm64",
            where="f: base",
        )
    assert str(info.value) == f"f: base.url: {server.url}/missing.img.xz: not found (HTTP 404)"
    with pytest.raises(BuildError) as refused:
        obtain_base(
            BaseSource(url="http://127.0.0.1:1/x.img", sha256="c" * 64), "arm64", where="f: base"
        )
    assert "connection refused" in str(refused.value) and "\n" not in str(refused.value)


def test_every_compression_decompresses_to_the_same_sparse_image(tmp_path: Path) -> None:
    raw = raw_image()
    sources = {
        "a.img.xz": lzma.compress(raw),
        "a.img.gz": gzip.compress(raw),
        "a.img.zst": subprocess.run(
            ["zstd", "-q", "-c"], input=raw, capture_output=True, check=True
        ).stdout,
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("README.txt", "read me")
        archive.writestr("ubuntu.img", raw)
        archive.writestr("checksums.sha256", "x")
    sources["a.zip"] = buffer.getvalue()
    for name, data in sources.items():
        src = tmp_path / name
        src.write_bytes(data)
        dest = tmp_path / f"{name}.raw"
        assert compress.decompress(src, dest) == sha(raw), name
        assert dest.read_bytes() == raw and dest.stat().st_blocks * 512 < MIB, name


def test_sparse_writes_keep_every_data_byte_across_chunk_boundaries(tmp_path: Path) -> None:
    """Runs of data blocks that straddle 4 MiB read chunks, a short tail, zero chunks."""
    block = 64 * 1024
    data = bytearray(2 * 4 * MIB + 3 * block + 100)
    data[:10] = b"\x55" * 10  # first block
    data[4 * MIB - 5 : 4 * MIB + block + 1] = b"\xaa" * (block + 6)  # straddles the chunk edge
    data[-1] = 1  # the short last block
    for name, raw, hashed in (("a.img", bytes(data), True), ("b.img", bytes(5 * MIB), False)):
        dest = tmp_path / name
        digest = compress.write_sparse(io.BytesIO(raw), dest, hashed=hashed)
        assert digest == (sha(raw) if hashed else None)
        assert dest.read_bytes() == raw
    assert (tmp_path / "b.img").stat().st_blocks == 0, "all zeros: all hole"
    with open(tmp_path / "a.img", "rb") as f:
        first_hole = os.lseek(f.fileno(), 0, os.SEEK_HOLE)
        next_data = os.lseek(f.fileno(), first_hole, os.SEEK_DATA)
    assert (first_hole, next_data) == (block, 4 * MIB - block), "zero blocks became holes"


@pytest.mark.parametrize("tool", ["xz", "zstd", "gzip"])
def test_truncated_compressed_base_is_one_line_and_leaves_nothing(
    tmp_path: Path, tool: str
) -> None:
    packed = subprocess.run([tool, "-c"], input=raw_image(), capture_output=True, check=True)
    suffix = {"xz": "xz", "zstd": "zst", "gzip": "gz"}[tool]
    src = tmp_path / f"base.img.{suffix}"
    src.write_bytes(packed.stdout[: len(packed.stdout) // 2])
    dest = tmp_path / "out.img"
    with pytest.raises(UserError) as info:
        compress.decompress(src, dest, hashed=False)
    assert str(info.value).startswith(f"{src}: cannot decompress: ")
    assert "\n" not in str(info.value) and not dest.exists()


def test_zip_with_two_images_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.img", b"a")
        archive.writestr("b.img", b"b")
    with pytest.raises(UserError, match=r"expected exactly one \.img in the zip, found 2"):
        compress.decompress(path, tmp_path / "out.img")


def k3s_release(server: AssetServer, version: str = "v1.33.5+k3s1") -> dict[str, bytes]:
    assets = {"k3s-arm64": elf_for("arm64").read_bytes(), "k3s-armhf": elf_for("armhf").read_bytes(),
              "k3s-airgap-images-arm.tar.zst": b"airgap-arm", "k3s-airgap-images-arm64.tar.zst": b"airgap-arm64"}  # fmt: skip
    prefix = "/k3s/v1.33.5%2Bk3s1"
    for name, data in assets.items():
        server.files[f"{prefix}/{name}"] = data
    server.files[f"{prefix}/sha256sum-arm64.txt"] = "".join(
        f"{sha(assets[n])}  {n}\n" for n in ("k3s-arm64", "k3s-airgap-images-arm64.tar.zst")
    ).encode()
    server.files[f"{prefix}/sha256sum-arm.txt"] = "".join(
        f"{sha(assets[n])}  {n}\n" for n in ("k3s-armhf", "k3s-airgap-images-arm.tar.zst")
    ).encode()
    server.redirects["/channels/stable"] = f"{server.url}/releases/tag/{version}"
    server.files[f"/releases/tag/{version}"] = b"release page"
    return assets


def test_armhf_never_takes_an_arm64_asset(server: AssetServer) -> None:
    assets = k3s_release(server)
    src = K3sSource(version="v1.33.5+k3s1", release_url=f"{server.url}/k3s", airgap_images=True)
    k3s = obtain_k3s(src, "armhf", where="f: k3s")
    assert k3s.path.read_bytes() == assets["k3s-armhf"] and k3s.version == "v1.33.5+k3s1"
    airgap = obtain_airgap(src, "armhf", k3s, where="f: k3s")
    assert airgap is not None and airgap.path.read_bytes() == b"airgap-arm"
    assert not [r.path for r in server.requests if "arm64" in r.path]


def test_channel_resolves_through_the_channel_server(server: AssetServer) -> None:
    assets = k3s_release(server)
    src = K3sSource(
        channel="stable", channel_url=f"{server.url}/channels", release_url=f"{server.url}/k3s"
    )
    k3s = obtain_k3s(src, "arm64", where="f: k3s")
    assert k3s.version == "v1.33.5+k3s1" and k3s.path.read_bytes() == assets["k3s-arm64"]


def test_bad_k3s_checksum_file_is_refused(server: AssetServer) -> None:
    k3s_release(server)
    server.files["/k3s/v1.33.5%2Bk3s1/sha256sum-arm64.txt"] = f"{'0' * 64}  k3s-arm64\n".encode()
    src = K3sSource(version="v1.33.5+k3s1", release_url=f"{server.url}/k3s")
    with pytest.raises(UserError, match="sha256 mismatch"):
        obtain_k3s(src, "arm64", where="f: k3s")
