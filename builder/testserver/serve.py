"""`pifleet test-server`: run the K3s test server in the foreground for manual tests and demos."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from builder.testserver.server import K3sTestServer
from builder.util.atomic import write_atomic

log = logging.getLogger("pifleet.test-server")


def command(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir) if args.state_dir else None
    with K3sTestServer(
        port=args.port, state_dir=state_dir, host=args.host, extra_sans=tuple(args.san)
    ) as server:
        token_out = Path(args.token_out) if args.token_out else server.state_dir / "token"
        write_atomic(token_out, (server.mint_token() + "\n").encode(), 0o600)
        log.info("K3s test server (not K3s) listening on %s", server.url)
        log.info("QEMU guests reach it as %s", server.guest_url)
        log.info("join token written to %s (mode 0600)", token_out)
        log.info("state in %s; Ctrl-C stops", server.state_dir)
        seen: list[str] = []
        while True:
            for node in server.registered_nodes()[len(seen) :]:
                log.info("node registered: %s", node)
                seen.append(node)
            time.sleep(1)
