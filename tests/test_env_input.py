"""Bad input from the environment and the command line (issue 21, item 8): one line on stderr,
exit 2 for bad input, 1 for a run-time failure, never an internal error or a traceback.
Every case runs the real CLI."""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import REPO, TEST_TOKEN, pifleet
from tests.http_fixture import AssetServer

SECRET = TEST_TOKEN.rsplit(":", 1)[1]


def one_error_line(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert proc.returncode == code, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("warning: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# -- the environment ---------------------------------------------------------------------------


@pytest.mark.parametrize("epoch", ["99999999999999", "4354819200", "12abc", "-5", "\uff11\uff12"])
def test_source_date_epoch_out_of_range_is_bad_input(fleet_dir: Path, epoch: str) -> None:
    """FAT timestamps end in 2107; mtools silently wraps a later SOURCE_DATE_EPOCH (to 1980)
    and Python's dates end in 9999: before, 99999999999999 was an internal error at the end of
    the build."""
    proc = pifleet("build", "fleet.yaml", cwd=fleet_dir, env={"SOURCE_DATE_EPOCH": epoch})
    one_error_line(proc, 2, "SOURCE_DATE_EPOCH", "4354819199", repr(epoch))
    assert not (fleet_dir / "out").exists()


def test_source_date_epoch_at_the_last_fat_second_builds(fleet_dir: Path) -> None:
    proc = pifleet("build", "fleet.yaml", cwd=fleet_dir, env={"SOURCE_DATE_EPOCH": "4354819199"})
    assert proc.returncode == 0, proc.stderr


def test_pifleet_cache_that_is_a_file_is_blamed_on_pifleet_cache(fleet_dir: Path) -> None:
    """Before: `fleet.yaml: k3s.binary: ...: Not a directory`, blaming an input that is fine."""
    (fleet_dir / "cachefile").write_text("not a directory\n")
    env = {"PIFLEET_CACHE": str(fleet_dir / "cachefile")}
    line = one_error_line(pifleet("build", "fleet.yaml", cwd=fleet_dir, env=env), 2)
    assert line.startswith(f"pifleet: error: PIFLEET_CACHE: {fleet_dir / 'cachefile'}: "), line
    assert "k3s" not in line and "Not a directory" in line


def run_with_stdout(args: list[str], stdout: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "builder", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.mark.parametrize("args", [["images"], ["--version"], ["--help"], ["token", "--help"]])
def test_stdout_on_dev_full_is_one_line_exit_1(args: list[str]) -> None:
    """Nowhere to write the output is a run-time failure: one line, not an internal error nor
    Python's "Exception ignored ... flush" at exit."""
    with open("/dev/full", "w") as full:
        proc = run_with_stdout(args, full.fileno())
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        "pifleet: error: cannot write to standard output: No space left on device"
    ]


def test_stdout_to_a_closed_pipe_is_exit_1_and_silent() -> None:
    """`pifleet images | head -0`: the reader went away; nothing to say about it."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = run_with_stdout(["images"], write)
    finally:
        os.close(write)
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr


# -- token pin and token check: the server URL and the timeout ----------------------------------


@pytest.fixture
def token_dir(tmp_path: Path) -> Path:
    (tmp_path / "tok").write_text(TEST_TOKEN + "\n")
    (tmp_path / "tok").chmod(0o600)
    return tmp_path


def token_commands(server: str, *extra: str) -> list[tuple[str, ...]]:
    pin = ("token", "pin", server, "--token-file", "tok", "-o", "pinned", "--yes", *extra)
    check = ("token", "check", "--server", server, "--token-file", "tok", *extra)
    return [pin, check]


BAD_SERVERS = {
    "https://127.0.0.1:99999": "the port must be 1-65535",
    "https://127.0.0.1:0": "the port must be 1-65535",
    "https://[::1:6443": "Invalid IPv6 URL",
    "https://[::zz]:6443": "not a URL",
    "https://[127.0.0.1]:6443": "not a URL",
    "http://127.0.0.1:6443": "must be https://host[:port]",
    "https://127.0.0.1:6443/path": "and nothing more",
    "https://k3s example.net": "no spaces or control characters",
    "https://k3s.example.net\n:6443": "no spaces or control characters",
    "https://10.0.0.300:6443": "with a host name or address",
}


@pytest.mark.parametrize("command", [0, 1], ids=["pin", "check"])
@pytest.mark.parametrize("server", list(BAD_SERVERS))
def test_a_bad_server_url_is_one_line_exit_2(token_dir: Path, server: str, command: int) -> None:
    """Before: port 99999 and a broken IPv6 literal were internal errors, http:// exit 1."""
    args = token_commands(server)[command]
    proc = pifleet(*args, cwd=token_dir, timeout=60)
    one_error_line(proc, 2, BAD_SERVERS[server], f"see `pifleet token {args[1]} --help`")
    assert not (token_dir / "pinned").exists()
    assert SECRET not in proc.stdout + proc.stderr


@pytest.mark.parametrize("command", [0, 1], ids=["pin", "check"])
@pytest.mark.parametrize("value", ["nan", "-1", "0", "inf", "1e30", "ten"])
def test_a_bad_timeout_is_one_line_exit_2(token_dir: Path, value: str, command: int) -> None:
    args = token_commands("https://127.0.0.1:9", "--timeout", value)[command]
    proc = pifleet(*args, cwd=token_dir, timeout=60)
    one_error_line(proc, 2, "argument --timeout", "more than 0 and at most 3600")


def test_token_pin_output_that_is_a_directory_is_refused_before_any_request(
    token_dir: Path,
) -> None:
    (token_dir / "outdir").mkdir()
    for output, needle in (("outdir", "is a directory"), ("missing/p", "does not exist")):
        proc = pifleet(
            "token", "pin", "https://127.0.0.1:9", "--token-file", "tok", "-o", output, "--yes",
            cwd=token_dir, timeout=60,
        )  # fmt: skip
        one_error_line(proc, 2, "argument -o/--output", needle)


class Listener:
    """A TCP listener on 127.0.0.1 that records every byte any client sends it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.received: list[bytes] = []
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.settimeout(1)
            try:
                while chunk := conn.recv(65536):
                    self.received.append(chunk)
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.mark.parametrize("command", [0, 1], ids=["pin", "check"])
@pytest.mark.parametrize("userinfo", ["user:pw-in-url@", "user@", ":pw-in-url@"])
def test_credentials_in_the_server_url_are_refused_and_never_sent(
    token_dir: Path, userinfo: str, command: int
) -> None:
    """`https://user:pw@host` was accepted: the password would go to whichever server answers
    and into every message naming the server. Refused before any connection, the password not
    echoed."""
    listener = Listener()
    try:
        server = f"https://{userinfo}127.0.0.1:{listener.port}"
        proc = pifleet(*token_commands(server)[command], cwd=token_dir, timeout=60)
    finally:
        listener.close()
    one_error_line(proc, 2, "carries no user name or password", "https://***@127.0.0.1:")
    assert "pw-in-url" not in proc.stdout + proc.stderr
    assert listener.connections == 0 and listener.received == []


def test_the_checks_accept_what_a_k3s_server_url_may_be(token_dir: Path) -> None:
    """Host names, IPv4, IPv6 (with a zone) and the default port pass the parser: the command
    then fails on the network (nothing listens at port 9), exit 1 as a run-time failure."""
    from builder.config.serverurl import server_url, timeout

    for url in ("https://k3s.example.net", "https://10.0.0.1:6443", "https://[fd00::1]:6443",
                "https://[fe80::1%25eth0]:6443", "https://k3s:6443/"):  # fmt: skip
        assert server_url(url) == url.rstrip("/")
    assert timeout("0.5") == 0.5 and timeout("3600") == 3600.0
    proc = pifleet(
        "token", "pin", "https://127.0.0.1:9", "--token-file", "tok", "-o", "p", "--yes",
        "--timeout", "2", cwd=token_dir, timeout=60,
    )  # fmt: skip
    one_error_line(proc, 1, "https://127.0.0.1:9")


# -- PEM garbage at /cacerts (the pin owner's: firstboot/x509.py, builder/config/pin.py; fixed by
# the CA pin commit, which refuses a bundle that holds no parsable certificate) ------------------


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return tmp / "cert.pem", tmp / "key.pem"


@pytest.fixture
def garbage_cacerts(token_dir: Path) -> Iterator[str]:
    garbage = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    with AssetServer(files={"/cacerts": garbage}, tls=self_signed(token_dir)) as server:
        yield server.url


def test_token_pin_refuses_pem_garbage_at_cacerts(token_dir: Path, garbage_cacerts: str) -> None:
    """A /cacerts body that holds no parsable certificate was pinned as "one certificate":
    the token would pin a hash of garbage. Expected: one line, nothing written."""
    (token_dir / "short").write_text("s3cr3t-short-password\n")  # pins nothing yet
    (token_dir / "short").chmod(0o600)
    proc = pifleet(
        "token", "pin", garbage_cacerts, "--token-file", "short", "-o", "pinned", "--yes",
        cwd=token_dir, timeout=60,
    )  # fmt: skip
    assert "one certificate" not in proc.stdout
    assert proc.returncode in (1, 2), proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "certificate" in proc.stderr
    assert not (token_dir / "pinned").exists()
