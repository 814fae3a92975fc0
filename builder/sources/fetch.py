"""Downloads: content-addressed cache, resumable, sha256-verified before anything uses them.

A file with a known sha256 lives at `<cache>/downloads/sha256/<digest>/<name>`;
a cache hit does no network I/O. A download goes to `<cache>/downloads/partial/`
and resumes there with an HTTP Range request after an interruption; it is
hashed as it streams and promoted into the cache only when the digest
matches. Transient failures are retried with backoff; every final failure is
one line (404, TLS, DNS, refused, disk full). Each call has an overall deadline, every
attempt, redirect and read included (a server that sends one byte a second never
trips a per-read timeout): DOWNLOAD_DEADLINE for a file, DOCUMENT_DEADLINE for a small
document or a redirect, both lowered or (for files) raised by PIFLEET_FETCH_DEADLINE. requests honours HTTPS_PROXY and
REQUESTS_CA_BUNDLE; `file://` URLs serve offline copies.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urljoin, urlsplit

import requests
import urllib3

from builder import version
from builder.disk.sparse import sha256_file
from builder.util.cache import cache_dir
from builder.util.console import progress
from builder.util.deadline import Deadline, TrackedAdapter, seconds
from builder.util.errors import BuildError, UserError

log = logging.getLogger("pifleet.fetch")

T = TypeVar("T")
ATTEMPTS = 4  # tries per download before giving up (PIFLEET_FETCH_ATTEMPTS)
DEADLINE_SETTING = "PIFLEET_FETCH_DEADLINE"
DOWNLOAD_DEADLINE = 7200.0  # seconds for one file, every attempt included (a 2 GB base at 300 kB/s)
DOCUMENT_DEADLINE = 120.0  # seconds for a checksum file, an OS list or a redirect
_CHUNK = 1024 * 1024
MAX_REDIRECTS = 10
_session: requests.Session | None = None


def session() -> requests.Session:
    global _session
    if _session is None:
        _session = requests.Session()
        _session.headers["User-Agent"] = f"pifleet/{version()}"
        for prefix in ("http://", "https://"):
            _session.mount(prefix, TrackedAdapter())  # its connections obey Deadline
    return _session


def attempts() -> int:
    text = os.environ.get("PIFLEET_FETCH_ATTEMPTS", str(ATTEMPTS))
    if not text.strip().isdigit() or int(text) < 1:
        raise UserError(f"PIFLEET_FETCH_ATTEMPTS: {text!r} is not a whole number of tries >= 1")
    return int(text)


def deadline(what: str, longest: float) -> Deadline:
    """The deadline of one call: `longest` seconds, or PIFLEET_FETCH_DEADLINE (never more than
    `longest` for a document: only a file's download may be allowed longer)."""
    text = os.environ.get(DEADLINE_SETTING, "")
    allowed = seconds(text, DEADLINE_SETTING) if text else longest
    if longest == DOCUMENT_DEADLINE:
        allowed = min(allowed, longest)
    return Deadline(allowed, what, DEADLINE_SETTING)


def cached(sha256: str, name: str) -> Path:
    return cache_dir("downloads") / "sha256" / sha256 / name


def fetch(
    url: str, sha256: str, *, name: str | None = None, where: str = "download", pinned: bool = False
) -> Path:
    """The verified file at `url` (from the cache when already there). `pinned`: `sha256`
    comes from the config itself, so plain http cannot change what is accepted."""
    sha256 = sha256.lower()
    check_scheme(url, where, pinned)
    name = name or Path(unquote(urlsplit(url).path)).name or "download"
    final = cached(sha256, name)
    if final.exists():
        log.debug("cache hit for %s", url)
        return final
    partial = cache_dir("downloads") / "partial" / f"{sha256}.part"
    if url.startswith("file://"):
        _copy_file(url, partial, where)
    else:
        _download_with_retries(url, partial, where)
    actual = sha256_file(partial)
    if actual != sha256:
        partial.unlink(missing_ok=True)
        raise UserError(f"{where}: sha256 mismatch for {url}: expected {sha256}, got {actual}")
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, final)
    return final


def _download_with_retries(url: str, partial: Path, where: str) -> None:
    with deadline(f"{where}: {url}", DOWNLOAD_DEADLINE) as limit:
        _retried(url, where, limit, lambda: _download(url, partial, where, limit), 30.0, True)


def _retried(
    url: str, where: str, limit: Deadline, once: Callable[[], T], cap: float, say: bool
) -> T:
    """`once()` up to attempts() times within `limit`, after a transient failure waiting a
    random delay of at most min(cap, 2**attempt) seconds (logged when `say`)."""
    tries = attempts()
    for attempt in range(1, tries + 1):
        try:
            return once()
        except _Transient as exc:
            limit.check()
            if attempt == tries:
                raise BuildError(
                    f"{where}: {url}: {exc} (gave up after {tries} attempts)"
                ) from None
            delay = random.uniform(0, min(cap, 2.0**attempt))
            if say:
                log.warning("warning: %s: %s; retrying in %.0f s", url, exc, delay)
            limit.sleep(delay)
    raise AssertionError("unreachable: attempts() is at least 1")


def fetch_text(url: str, where: str, limit: int = 32 * 1024 * 1024) -> str:
    """A small document (OS list, checksum file, channel answer); not cached: it changes."""
    if url.startswith("file://") or "://" not in url:
        path = Path(unquote(urlsplit(url).path) if url.startswith("file://") else url)
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"{where}: {path}: {exc.strerror}") from None
    check_scheme(url, where, pinned=False)
    with deadline(f"{where}: {url}", DOCUMENT_DEADLINE) as within:
        body = _retried(
            url, where, within, lambda: _read_body(url, where, limit, within), math.inf, False
        )
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{where}: {url}: not UTF-8 text") from None


def _read_body(url: str, where: str, limit: int, within: Deadline) -> bytes:
    with _get(url, where, {}, within) as response:
        try:
            body: bytes = response.raw.read(limit + 1, decode_content=True)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise _Transient(f"interrupted: {_describe(exc)}") from None
    if len(body) > limit:
        raise UserError(f"{where}: {url}: larger than {limit} bytes")
    return body


def final_url(url: str, where: str) -> str:
    """Where `url` redirects to (the K3s channel server answers with a redirect)."""
    check_scheme(url, where, pinned=False)
    with deadline(f"{where}: {url}", DOCUMENT_DEADLINE) as within:
        for _hop in range(MAX_REDIRECTS + 1):
            try:
                response = session().head(url, allow_redirects=False, timeout=within.timeout(30))
            except requests.RequestException as exc:
                within.check()
                raise BuildError(f"{where}: {url}: {_describe(exc)}") from None
            if not response.is_redirect:
                break
            url = _next_hop(url, response, where)
        else:
            raise UserError(f"{where}: {url}: more than {MAX_REDIRECTS} redirects")
    if response.status_code >= 400:
        raise UserError(f"{where}: {url}: HTTP {response.status_code}")
    return url


def check_scheme(url: str, where: str, pinned: bool) -> None:
    """Plain http only for a download whose sha256 the config states, or a mirror on this
    machine (loopback): anything else fetched over http could be swapped on the way."""
    parts = urlsplit(url)
    if parts.scheme in ("https", "file") or "://" not in url:
        return
    if parts.scheme == "http" and (pinned or _loopback(parts.hostname or "")):
        return
    raise UserError(
        f"{where}: {url}: plain {parts.scheme}:// is refused: use https:// "
        "(http is accepted only for a download whose sha256 is in the config)"
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _next_hop(url: str, response: requests.Response, where: str) -> str:
    """The redirect target; a redirect from https to http is never followed."""
    response.close()
    target = urljoin(url, response.headers.get("Location", ""))
    if urlsplit(url).scheme == "https" and urlsplit(target).scheme != "https":
        raise UserError(f"{where}: {url}: refusing a redirect from https to {target}")
    return target


class _Transient(Exception):
    """A failure worth retrying (connection lost, timeout, 5xx)."""


def _get(url: str, where: str, headers: dict[str, str], within: Deadline) -> requests.Response:
    """GET `url`, following redirects but never from https down to http. With a Range
    header, a 416 answer is returned (the partial file is complete or longer)."""
    for _hop in range(MAX_REDIRECTS + 1):
        response = _get_once(url, where, headers, within)
        if not response.is_redirect:
            break
        url = _next_hop(url, response, where)
    else:
        raise UserError(f"{where}: {url}: more than {MAX_REDIRECTS} redirects")
    if response.status_code == 416 and "Range" in headers:
        return response
    return _checked(response, url, where)


def _get_once(url: str, where: str, headers: dict[str, str], within: Deadline) -> requests.Response:
    timeout = (within.timeout(20), within.timeout(60))
    try:
        return session().get(
            url, stream=True, timeout=timeout, headers=headers, allow_redirects=False
        )
    except requests.exceptions.SSLError as exc:
        raise UserError(f"{where}: {url}: TLS error: {_describe(exc)}") from None
    except requests.exceptions.ConnectionError as exc:
        message = _describe(exc)
        if "Name or service not known" in message or "resolve" in message.lower():
            raise UserError(f"{where}: {url}: cannot resolve the host name") from None
        raise _Transient(message) from None
    except requests.RequestException as exc:
        raise _Transient(_describe(exc)) from None


def _checked(response: requests.Response, url: str, where: str) -> requests.Response:
    if response.status_code in (404, 410):
        response.close()
        raise UserError(f"{where}: {url}: not found (HTTP {response.status_code})")
    if response.status_code >= 500 or response.status_code == 429:
        response.close()
        raise _Transient(f"HTTP {response.status_code}")
    if response.status_code >= 400:
        response.close()
        raise UserError(f"{where}: {url}: HTTP {response.status_code}")
    return response


def _copy_file(url: str, partial: Path, where: str) -> None:
    source = Path(unquote(urlsplit(url).path))
    if not source.is_file():
        raise UserError(f"{where}: {source} does not exist")
    partial.parent.mkdir(parents=True, exist_ok=True)
    _copy_to(source, partial)


def _download(url: str, partial: Path, where: str, within: Deadline) -> None:
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    response = _get(url, where, headers, within)
    if have and response.status_code == 416:
        # Nothing left to send from `have` on: the partial file is already complete (or longer
        # than the file now is). It cannot be resumed: start again from the first byte.
        response.close()
        log.info("discarding the partial download of %s (the server has nothing after it)", url)
        partial.unlink(missing_ok=True)
        have = 0
        response = _get(url, where, {}, within)
    with response:
        if have and response.status_code != 206:
            have = 0  # the server ignored the Range: start over
        total = int(response.headers.get("Content-Length", "0")) + have or None
        partial.parent.mkdir(parents=True, exist_ok=True)
        try:
            with (
                open(partial, "ab" if have else "wb") as out,
                progress(Path(partial).name[:12], total) as bar,
            ):
                bar.advance(have)
                # Small reads: what arrived before a connection drops is on disk to resume from.
                for chunk in response.iter_content(64 * 1024):
                    out.write(chunk)
                    bar.advance(len(chunk))
        except requests.RequestException as exc:
            raise _Transient(f"interrupted: {_describe(exc)}") from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise BuildError(
                    f"{where}: disk full while downloading {url} into {partial.parent}"
                ) from None
            raise


def _copy_to(source: Path, dest: Path) -> None:
    with open(source, "rb") as fin, open(dest, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            fout.write(chunk)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    for marker in (
        "Connection refused",
        "timed out",
        "Name or service not known",
        "certificate verify failed",
    ):
        if marker in text:
            return (
                marker.lower()
                if marker != "Name or service not known"
                else "cannot resolve the host name"
            )
    return text.splitlines()[0][:200] if text else type(exc).__name__
