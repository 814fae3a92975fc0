"""The kernel boot-test supplies for a Pi-kernel image (builder/qemu/supplied.py): fetched
only through Debian's signature chain, and a mirror that cannot prove itself gives nothing.

The successful fetch (deb.debian.org, verified by apt) is what every arm64 boot of the default
run boots (tests/test_boot.py); here an attacker's mirror on 127.0.0.1 serves an index signed
by no Debian key, or none at all, with a "kernel" package beside it. apt must refuse the
index, so no .deb is ever requested, nothing lands in the cache, and the error is one line.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest

from builder.qemu import supplied
from builder.util.errors import BuildError
from tests.http_fixture import AssetServer

PACKAGES = b"""Package: linux-image-arm64
Version: 99
Architecture: arm64
Depends: linux-image-9.9.9-arm64
Filename: pool/main/l/linux-image-9.9.9-arm64_99_arm64.deb
Size: 4
SHA256: %s

"""


def forged_files(signed: bool) -> dict[str, bytes]:
    deb = b"evil"
    packages = PACKAGES % hashlib.sha256(deb).hexdigest().encode()
    packed = gzip.compress(packages)
    release = (
        "Origin: Debian\nSuite: trixie\nCodename: trixie\nArchitectures: arm64\nComponents: main\n"
        "SHA256:\n"
        f" {hashlib.sha256(packages).hexdigest()} {len(packages)} main/binary-arm64/Packages\n"
        f" {hashlib.sha256(packed).hexdigest()} {len(packed)} main/binary-arm64/Packages.gz\n"
    ).encode()
    files = {
        "/debian/dists/trixie/main/binary-arm64/Packages": packages,
        "/debian/dists/trixie/main/binary-arm64/Packages.gz": packed,
        "/debian/pool/main/l/linux-image-9.9.9-arm64_99_arm64.deb": deb,
    }
    if signed:  # a clearsigned-looking file whose signature is no Debian key's
        files["/debian/dists/trixie/InRelease"] = (
            b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n" + release
            + b"-----BEGIN PGP SIGNATURE-----\n\niQEzBAEBCgAdFiEE\n=AAAA\n"
            b"-----END PGP SIGNATURE-----\n"
        )  # fmt: skip
    else:
        files["/debian/dists/trixie/Release"] = release
    return files


@pytest.mark.parametrize("signed", [True, False], ids=["forged-signature", "unsigned"])
def test_a_mirror_that_cannot_prove_itself_gives_no_kernel(
    signed: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIFLEET_CACHE", str(tmp_path / "cache"))
    with AssetServer(files=forged_files(signed)) as mirror, pytest.raises(BuildError) as raised:
        supplied.supplied_kernel("arm64", mirror=mirror.url + "/debian")
    message = str(raised.value)
    assert "\n" not in message and "apt-get update" in message, message
    paths = [r.path for r in mirror.requests]
    assert any("dists/trixie" in p for p in paths), paths
    assert not any("/pool/" in p for p in paths), f"a package was fetched: {paths}"
    assert not any("Packages" in p for p in paths), (
        f"an index no signature vouches for was fetched: {paths}"
    )
    kernels = tmp_path / "cache/kernels"
    assert sorted(p.name for p in kernels.iterdir()) == [".arm64.lock"], list(kernels.iterdir())
