"""`pifleet token pin`: turn a token that pins nothing into a pinned `K10<hash>::…` token,
from the operator's desk: fetch the server's /cacerts, show the CA fingerprint for a human to
compare with the server, and write the pinned token (0600)."""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from builder.config.token import read_token_file
from builder.util.atomic import write_atomic
from builder.util.errors import BuildError, UserError
from firstboot import x509
from firstboot.server import ServerError, fetch_cacerts
from firstboot.token import parse


def describe(body: bytes, ca_hash: str) -> list[str]:
    """What the operator compares, and how to get the same figure on the server."""
    certs = x509.split(body)
    if len(certs) == 1 or ca_hash == hashlib.sha256(body).hexdigest():
        return [
            f"server CA: one certificate; K3s CA hash sha256 {ca_hash}",
            "compare on the server: sha256sum /var/lib/rancher/k3s/server/tls/server-ca.crt",
        ]
    colons = ":".join(ca_hash[i : i + 2] for i in range(0, 64, 2)).upper()
    return [
        f"server CA: a bundle of {len(certs)} certificates; K3s pins its root, "
        f"SHA-256 fingerprint {colons}",
        "compare on the server: openssl x509 -noout -fingerprint -sha256 -in <the root CA>",
    ]


def command(args: argparse.Namespace) -> int:
    token = parse(read_token_file(Path(args.token_file)).reveal())
    server = args.server.rstrip("/")
    try:
        body = fetch_cacerts(server, args.timeout)
    except ServerError as exc:
        raise BuildError(f"{server}: {exc}") from None
    pinned = x509.pin(body)
    ca_hash = pinned.ca_hash
    if pinned.problem:
        raise BuildError(f"{server}: {pinned.problem}: possible man-in-the-middle; nothing written")
    if token.pinned and token.ca_hash != ca_hash:
        raise UserError(
            f"{args.token_file}: the token already pins another CA than {server} serves "
            "(a token from another cluster, or a man-in-the-middle)"
        )
    for line in describe(body, ca_hash):
        print(line)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError("not on a terminal: give --yes to write the pinned token unasked")
        answer = input("Is this the CA of your K3s server? Write the pinned token [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing written")
            return 1
    user = "server" if args.role == "server" else "node"
    text = token.text() if token.pinned else token.pinned_text(ca_hash, user)
    write_atomic(Path(args.output), (text + "\n").encode(), 0o600)
    print(f"pinned token written to {args.output} (mode 0600)")
    return 0
