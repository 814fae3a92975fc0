"""The one way pifleet runs an external command.

Every tool (mtools, debugfs, resize2fs, qemu-img, ...) goes through `run`, which
logs the command line, captures output, and turns a failure into a one-line
`BuildError` that names the tool and its last line of complaint.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from builder.util.errors import BuildError, UserError

log = logging.getLogger("pifleet.run")
# For tools whose output may hold a secret (a debugfs dump, an mcopy copy, a qemu-img
# overlay): what they create is 0600 (0700 for a folder) from its first byte. Opt-in: a
# tool building a root filesystem (locale-gen, dpkg-deb) must keep its usual modes.
PRIVATE_UMASK = 0o077


def require_tool(name: str, package: str) -> str:
    """Path of `name` on PATH, or a UserError that says which package provides it."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise UserError(f"{name} not found: install the '{package}' package (tools/setup.sh does)")
    return path


@functools.cache
def no_fsync_env() -> dict[str, str]:
    """Environment that turns fsync into a no-op (libeatmydata), or {} when it is absent.

    Only for tools writing to pifleet's own temporary image: debugfs fsyncs on
    close, which flushes every page the base copy left dirty (seconds for a
    2 GiB image) although the file is renamed into place only at the end.
    """
    for pattern in (
        "/usr/lib/*/libeatmydata.so",
        "/usr/lib/libeatmydata.so",
        "/usr/lib64/libeatmydata.so",
    ):
        for lib in sorted(glob.glob(pattern)):
            return {"LD_PRELOAD": lib}
    log.debug("libeatmydata not found: e2fsprogs will fsync the temporary image")
    return {}


def run(
    argv: Sequence[str | Path],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    what: str | None = None,
    umask: int = -1,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run `argv`, capture stdout/stderr, raise BuildError on a non-zero exit.

    `what` names the operation for the error message ("writing /etc/x into rootfs").
    `env` entries are added to the inherited environment. `umask` (PRIVATE_UMASK) applies to
    the tool; -1 keeps pifleet's own.
    """
    args = [str(a) for a in argv]
    log.debug("run: %s", " ".join(args))
    full_env = None if env is None else {**os.environ, **env}
    started = time.monotonic()
    try:
        proc = subprocess.run(
            args, input=input, capture_output=True, env=full_env, check=False, umask=umask, cwd=cwd
        )
    except FileNotFoundError as exc:
        raise UserError(f"{args[0]} not found: run tools/setup.sh to install host tools") from exc
    log.debug(
        "  %s: exit %d in %.2f s", Path(args[0]).name, proc.returncode, time.monotonic() - started
    )
    if check and proc.returncode != 0:
        raise BuildError(f"{what or Path(args[0]).name} failed: {last_line(proc)}")
    return proc


def last_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    """The most telling line of a failed command's output, for a one-line error."""
    for stream in (proc.stderr, proc.stdout):
        lines = [ln.strip() for ln in stream.decode(errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1]
    return f"exit status {proc.returncode}"


def stream(
    argv: Sequence[str | Path],
    consume: Callable[[bytes], None],
    *,
    env: Mapping[str, str] | None = None,
    what: str | None = None,
    umask: int = -1,
) -> None:
    """Run `argv` and hand its stdout to `consume` chunk by chunk (for large outputs)."""
    args = [str(a) for a in argv]
    log.debug("run: %s (streamed)", " ".join(args))
    full_env = None if env is None else {**os.environ, **env}
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, umask=umask
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        while chunk := proc.stdout.read(1 << 20):
            consume(chunk)
        err = proc.stderr.read()
        code = proc.wait()
    if code != 0:
        lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        raise BuildError(f"{what or Path(args[0]).name} failed: {lines[-1] if lines else code}")
