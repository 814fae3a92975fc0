"""`pifleet test-server`: run the K3s test server in the foreground for manual tests and demos,
in any of the modes a real K3s server can be in (see server.py and rules.py)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from builder.util.argtypes import count, error_status, host_name, port, seconds
from builder.util.errors import UserError

log = logging.getLogger("pifleet.test-server")
PHASE_FLAGS = {
    "cacerts_error": "cacerts_error_for",
    "apiserver_down": "apiserver_down_for",
    "core_not_ready": "not_ready_for",
    "throttle": "throttle_for",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=port, default=6443, help="(0: any free port)")
    p.add_argument("--host", type=host_name, default="127.0.0.1", help="address to listen on")
    p.add_argument("--state-dir", metavar="DIR", help="keep the CA and registrations here")
    p.add_argument("--token-out", metavar="FILE", help="write the join token here (0600)")
    p.add_argument(
        "--token-form",
        default="server",
        choices=("server", "node", "bootstrap", "bare-bootstrap", "short"),
        help="which kind of token --token-out gets (default: K10<hash>::server:<password>)",
    )
    p.add_argument(
        "--san",
        action="append",
        type=host_name,
        default=[],
        help="extra name or IP in its certificate",
    )
    p.add_argument(
        "--ca",
        default="single",
        choices=("single", "bundle"),
        help="one CA, or root + intermediate",
    )
    p.add_argument(
        "--unnamed", action="store_true", help="serve a certificate that names no address used"
    )
    for flag, what in (
        ("--cacerts-error-for", "/cacerts answers --cacerts-error-code"),
        ("--apiserver-down-for", "Bearer tokens get 403, apiserver paths 503"),
        ("--not-ready-for", "readyz answers 503 runtime core not ready"),
        ("--throttle-for", "agent routes answer 429"),
    ):
        p.add_argument(
            flag,
            type=seconds,
            default=0.0,
            metavar="SECONDS",
            help=what + " (from the first request)",
        )
    p.add_argument("--cacerts-error-code", type=error_status, default=503, metavar="CODE")
    p.add_argument(
        "--max-inflight",
        type=count,
        default=0,
        metavar="N",
        help="at most N agent/apiserver requests at once, the rest 429 + Retry-After (0: no limit)",
    )
    p.add_argument(
        "--service-time",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="each admitted request holds its in-flight slot this long",
    )
    p.add_argument(
        "--retry-after", type=count, default=1, metavar="SECONDS", help="(default 1, as K3s)"
    )


def command(args: argparse.Namespace) -> int:
    from builder.util.atomic import write_atomic

    for flag in ("max_inflight", "service_time", "retry_after"):
        if getattr(args, flag) < 0:
            raise UserError(f"test-server: --{flag.replace('_', '-')} must be >= 0")
    state_dir = _state_dir(args.state_dir)
    token_out = _token_out(args.token_out)
    phases = {
        phase: getattr(args, attr) for phase, attr in PHASE_FLAGS.items() if getattr(args, attr)
    }
    with contextlib.ExitStack() as stack:
        server = _start(stack, args, state_dir, phases)
        token_out = token_out or server.state_dir / "token"
        try:
            write_atomic(token_out, (server.mint_token(args.token_form) + "\n").encode(), 0o600)
        except OSError as exc:
            raise UserError(f"test-server: --token-out {token_out}: {exc.strerror}") from None
        log.info("K3s test server (not K3s) listening on %s", server.url)
        log.info("QEMU guests reach it as %s", server.guest_url)
        log.info("CA: %s, token CA hash sha256 %s", args.ca, server.ca_hash)
        log.info("join token (%s) written to %s (mode 0600)", args.token_form, token_out)
        log.info("state in %s; Ctrl-C stops", server.state_dir)
        seen: list[str] = []
        while True:
            for node in server.registered_nodes()[len(seen) :]:
                log.info("node registered: %s", node)
                seen.append(node)
            time.sleep(1)
    raise AssertionError("unreachable")


def _state_dir(value: str | None) -> Path | None:
    """--state-dir: a folder (made when missing) this user can write to."""
    if value is None:
        return None
    path = Path(value)
    where = f"test-server: --state-dir {value}"
    if path.exists() and not path.is_dir():
        raise UserError(f"{where}: not a folder")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{where}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{where}: not writable")
    return path


def _token_out(value: str | None) -> Path | None:
    """--token-out: a file to replace, in a folder that exists."""
    if value is None:
        return None
    path = Path(value)
    if path.is_dir():
        raise UserError(f"test-server: --token-out {value}: a folder; give the file to write")
    if not path.parent.is_dir():
        raise UserError(f"test-server: --token-out {value}: folder {path.parent} does not exist")
    return path


def _start(
    stack: contextlib.ExitStack,
    args: argparse.Namespace,
    state_dir: Path | None,
    phases: dict[str, float],
) -> Any:
    """The running test server; a state that cannot be loaded or an address that cannot be
    listened on is one line naming the option."""
    from builder.testserver.server import K3sTestServer

    where = f"test-server: --state-dir {state_dir}" if state_dir else "test-server: its state"
    try:
        server = K3sTestServer(
            port=args.port,
            state_dir=state_dir,
            host=args.host,
            extra_sans=tuple(args.san),
            ca_kind=args.ca,
            named=not args.unnamed,
            phases=phases,
            cacerts_error_code=args.cacerts_error_code,
            max_inflight=args.max_inflight,
            service_time=args.service_time,
            retry_after=args.retry_after,
        )
    except (ValueError, TypeError, KeyError) as exc:  # a damaged key, certificate or registry
        raise UserError(f"{where}: cannot load it ({_short(exc)}): repair or remove it") from None
    except OSError as exc:
        raise UserError(f"{where}: {exc.strerror or exc}") from None
    try:
        server.registered_nodes()  # read its registry now, not at the first node
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UserError(f"{where}: cannot load it ({_short(exc)}): repair or remove it") from None
    try:
        return stack.enter_context(server)
    except socket.gaierror:
        raise UserError(f"test-server: --host {args.host}: no such address") from None
    except OSError as exc:
        listen = f"test-server: cannot listen on {args.host} port {args.port}"
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"{listen}: the port is in use") from None
        raise UserError(f"{listen}: {exc.strerror or exc}") from None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()).split(". ")[0] or type(exc).__name__
    return text[:100]
