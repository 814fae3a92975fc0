"""`pifleet test-server`: run the K3s test server in the foreground for manual tests and demos,
in any of the modes a real K3s server can be in (see server.py and rules.py)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

log = logging.getLogger("pifleet.test-server")
PHASE_FLAGS = {
    "cacerts_error": "cacerts_error_for",
    "apiserver_down": "apiserver_down_for",
    "core_not_ready": "not_ready_for",
    "throttle": "throttle_for",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=6443)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--state-dir", metavar="DIR", help="keep the CA and registrations here")
    p.add_argument("--token-out", metavar="FILE", help="write the join token here (0600)")
    p.add_argument(
        "--token-form",
        default="server",
        choices=("server", "node", "bootstrap", "bare-bootstrap", "short"),
        help="which kind of token --token-out gets (default: K10<hash>::server:<password>)",
    )
    p.add_argument("--san", action="append", default=[], help="extra name or IP in its certificate")
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
            type=float,
            default=0.0,
            metavar="SECONDS",
            help=what + " (from the first request)",
        )
    p.add_argument("--cacerts-error-code", type=int, default=503, metavar="CODE")
    p.add_argument(
        "--max-inflight",
        type=int,
        default=0,
        metavar="N",
        help="at most N agent/apiserver requests at once, the rest 429 + Retry-After (0: no limit)",
    )
    p.add_argument(
        "--service-time",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="each admitted request holds its in-flight slot this long",
    )
    p.add_argument(
        "--retry-after", type=int, default=1, metavar="SECONDS", help="(default 1, as K3s)"
    )


def command(args: argparse.Namespace) -> int:
    from builder.testserver.server import K3sTestServer
    from builder.util.atomic import write_atomic
    from builder.util.errors import UserError

    for flag in ("max_inflight", "service_time", "retry_after"):
        if getattr(args, flag) < 0:
            raise UserError(f"test-server: --{flag.replace('_', '-')} must be >= 0")
    state_dir = Path(args.state_dir) if args.state_dir else None
    phases = {
        phase: getattr(args, attr) for phase, attr in PHASE_FLAGS.items() if getattr(args, attr)
    }
    with K3sTestServer(
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
    ) as server:
        token_out = Path(args.token_out) if args.token_out else server.state_dir / "token"
        write_atomic(token_out, (server.mint_token(args.token_form) + "\n").encode(), 0o600)
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
