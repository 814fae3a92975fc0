"""`pifleet token pin`: turn a token that pins nothing into a pinned `K10<hash>::…` token,
from the operator's desk: fetch the server's /cacerts, show the CA fingerprint for a human to
compare with the server, and write the pinned token (0600).

With `--kind kubeadm` there is no token to change (a kubeadm token never carries a pin, and the
first request of kubeadm's discovery is anonymous): fetch cluster-info anonymously, show the
CA's kubeadm pin (sha256 over its SubjectPublicKeyInfo) and the openssl command that gives the
same figure on the control plane, and print (or write, 0644: no secret) the fleet file's
`cluster.ca_cert_hashes` entry. The kind is given, never guessed: a bare `<id>.<secret>` token
is a valid K3s token and a valid kubeadm token alike."""

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
    if args.kind == "kubeadm":
        return kubeadm_command(args)
    if args.token_file is None:
        raise UserError("--token-file: required with --kind k3s (the token to pin)")
    if args.output is None:
        raise UserError("-o/--output: required with --kind k3s (where the pinned token goes)")
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
    user = "server" if args.role == "server" else "node"  # None (not given): an agent
    text = token.text() if token.pinned else token.pinned_text(ca_hash, user)
    write_atomic(Path(args.output), (text + "\n").encode(), 0o600)
    print(f"pinned token written to {args.output} (mode 0600)")
    return 0


# kubeadm's docs (create-cluster-kubeadm, "Joining your nodes") give this for an RSA CA, the
# default; `openssl pkey` reads any key type (kubeadm's ECDSA CA: encryptionAlgorithm).
OPENSSL_RSA = (
    "openssl x509 -pubkey -in /etc/kubernetes/pki/ca.crt | openssl rsa -pubin -outform der"
    " 2>/dev/null | openssl dgst -sha256 -hex"
)
OPENSSL_ANY = OPENSSL_RSA.replace("openssl rsa -pubin", "openssl pkey -pubin")


def kubeadm_lines(ca_pem: bytes) -> tuple[list[str], list[str]]:
    """(what the operator compares, the fleet file's lines) for a cluster CA bundle."""
    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from builder.config.kubeadm import spki_pin
    from builder.util.terminal import inert

    shown, pins = [], []
    certs = cx509.load_pem_x509_certificates(ca_pem)
    for cert in certs:
        pem = cert.public_bytes(serialization.Encoding.PEM)
        pin = spki_pin(pem)
        pins.append(pin)
        name = inert(cert.subject.rfc4514_string()[:80]) or "(no subject)"  # the server's text
        shown.append(f"cluster CA {name}: kubeadm pin {pin}")
    rsa_key = all(isinstance(c.public_key(), rsa.RSAPublicKey) for c in certs)
    shown.append(
        "compare the hex digits on the control plane: " + (OPENSSL_RSA if rsa_key else OPENSSL_ANY)
    )
    entry = ["cluster:", "  kind: kubeadm", "  ca_cert_hashes:"]
    entry += [f'    - "{pin}"' for pin in dict.fromkeys(pins)]
    return shown, entry


def kubeadm_command(args: argparse.Namespace) -> int:
    """`pifleet token pin --kind kubeadm SERVER [-o FILE]`: the CA pin for cluster.ca_cert_hashes."""
    from builder.config.clusterinfo import fetch_ca

    if args.token_file is not None:
        raise UserError(
            "--token-file: not with --kind kubeadm (a kubeadm token carries no pin and kubeadm's"
            " discovery reads cluster-info anonymously; the pin goes into cluster.ca_cert_hashes)"
        )
    if args.role == "server":
        raise UserError("--role server: not with --kind kubeadm (pifleet joins worker nodes only)")
    server = args.server.rstrip("/")
    shown, entry = kubeadm_lines(fetch_ca(server, args.timeout))
    for line in shown:
        print(line)
    if args.output is None:
        print("for the fleet file, once the figures agree:")
        print("\n".join(entry))
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError("not on a terminal: give --yes to write the pin unasked")
        answer = input("Is this the CA of your kubeadm control plane? Write the pin [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing written")
            return 1
    write_atomic(Path(args.output), ("\n".join(entry) + "\n").encode(), 0o644)
    print(f"ca_cert_hashes for the fleet file written to {args.output}")
    return 0
