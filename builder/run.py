"""The one way pifleet runs an external command.

Every tool (mtools, debugfs, resize2fs, qemu-img, ...) goes through `run`, which
logs the command line, captures output, and turns a failure into a one-line
`BuildError` that names the tool and its last line of complaint.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from builder.errors import BuildError, UserError

log = logging.getLogger("pifleet.run")


def require_tool(name: str, package: str) -> str:
    """Path of `name` on PATH, or a UserError that says which package provides it."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise UserError(f"{name} not found: install the '{package}' package (tools/setup.sh does)")
    return path


def run(
    argv: Sequence[str | Path],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    what: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run `argv`, capture stdout/stderr, raise BuildError on a non-zero exit.

    `what` names the operation for the error message ("writing /etc/x into rootfs").
    `env` entries are added to the inherited environment.
    """
    args = [str(a) for a in argv]
    log.debug("run: %s", " ".join(args))
    full_env = None
    if env is not None:
        import os

        full_env = {**os.environ, **env}
    try:
        proc = subprocess.run(args, input=input, capture_output=True, env=full_env, check=False)
    except FileNotFoundError as exc:
        raise UserError(f"{args[0]} not found: run tools/setup.sh to install host tools") from exc
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
