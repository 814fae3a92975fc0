"""Downloads cannot be swapped on the way and do not get stuck (issue 11, item 5): real
HTTP and HTTPS servers on 127.0.0.1 (tests/http_fixture.py), a certificate made here."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.config.model import BaseSource, K3sSource
from builder.sources.fetch import cached, check_scheme, fetch, fetch_text
from builder.sources.obtain import obtain_base, obtain_k3s
from builder.util.cache import cache_dir
from builder.util.errors import UserError
from tests.http_fixture import AssetServer


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIFLEET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIFLEET_FETCH_ATTEMPTS", "1")


@pytest.fixture
def tls_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AssetServer]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    with AssetServer(tls=(cert, key)) as srv:
        yield srv


@pytest.mark.parametrize(
    "source",
    [
        K3sSource(version="v1.33.5+k3s1", channel=None, release_url="http://mirror.example.net/k3s"),
        K3sSource(version=None, channel="stable", channel_url="http://update.example.net/v1-release/channels"),
    ],
)  # fmt: skip
def test_plain_http_without_a_config_sha256_is_refused(source: K3sSource) -> None:
    with pytest.raises(UserError, match=r"plain http:// is refused: use https://"):
        obtain_k3s(source, "arm64", where="f: k3s")
    with pytest.raises(UserError, match=r"plain http:// is refused"):
        fetch_text("http://downloads.example.net/os_list.json", "f: base.os_list")


def test_plain_http_only_with_the_sha256_in_the_config_or_on_this_machine() -> None:
    check_scheme("http://mirror.example.net/base.img", "w", pinned=True)  # base.url + sha256
    check_scheme("http://127.0.0.1:8080/base.img", "w", pinned=False)  # a local mirror
    check_scheme("https://mirror.example.net/base.img", "w", pinned=False)
    for url in ("http://mirror.example.net/x", "ftp://mirror.example.net/x", "http://10.0.0.1/x"):
        with pytest.raises(UserError, match="is refused"):
            check_scheme(url, "w", pinned=False)


def test_https_to_http_redirect_is_never_followed(tls_server: AssetServer) -> None:
    with AssetServer() as plain:
        plain.files["/sha256sum-arm64.txt"] = b"0" * 64 + b"  k3s-arm64\n"
        plain.files["/os.json"] = b"{}"
        tls_server.redirects["/sums"] = f"{plain.url}/sha256sum-arm64.txt"
        tls_server.redirects["/os.json"] = f"{plain.url}/os.json"
        tls_server.files["/ok.json"] = b"{}"
        assert fetch_text(f"{tls_server.url}/ok.json", "w") == "{}"  # the TLS setup works
        for path in ("/sums", "/os.json"):
            with pytest.raises(UserError, match="refusing a redirect from https to http://"):
                fetch_text(f"{tls_server.url}{path}", "w")
        payload = b"image" * 1000
        plain.files["/base.img"] = payload
        tls_server.redirects["/base.img"] = f"{plain.url}/base.img"
        with pytest.raises(UserError, match="refusing a redirect from https to http://"):
            fetch(f"{tls_server.url}/base.img", sha(payload), where="w")
        assert plain.requests == [], "nothing was fetched from the http side"


def test_completed_partial_download_is_discarded_and_restarted() -> None:
    payload = bytes(range(256)) * 4000
    with AssetServer() as server:
        server.files["/base.img"] = payload
        partial = cache_dir("downloads") / "partial" / f"{sha(payload)}.part"
        partial.parent.mkdir(parents=True)
        partial.write_bytes(payload[:-10] + b"corrupted!")  # complete length, killed before use
        got = obtain_base(
            BaseSource(url=f"{server.url}/base.img", sha256=sha(payload)), "arm64", where="f: base"
        )
        assert got.path == cached(sha(payload), "base.img")
        assert got.path.read_bytes() == payload
        assert [r.range for r in server.requests] == [f"bytes={len(payload)}-", None]
