"""Reading and checking the join token named by the config, without ever showing it."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from builder.config import environ, kubeadm
from builder.config.model import Cluster
from builder.util.errors import UserError
from builder.util.private import read_input
from builder.util.secret import Secret
from firstboot import x509
from firstboot.token import Token, TokenError, hash_problem
from firstboot.token import parse as parse_token

log = logging.getLogger("pifleet.token")


def given_text(cluster: Cluster, where: str) -> tuple[str, str]:
    """(key, text) of the token in cluster.token_file or cluster.token_env: one line of
    printable text, whatever its form; one-line errors naming the key, never the token."""
    if cluster.token_file is not None:
        key, text = "cluster.token_file", _read_file(cluster, where)
    else:
        key = "cluster.token_env"
        text = environ.take(cluster.token_env or "")
        if not text.strip():
            raise UserError(
                f"{where}: {key}: environment variable {cluster.token_env} is not set or empty"
            )
    one_line(text, f"{where}: {key}: ")
    return key, text


def read_token(cluster: Cluster, where: str) -> Secret:
    """The token from cluster.token_file or cluster.token_env; `where` is the config file.
    With cluster.kind kubeadm, a kubeadm bootstrap token (builder/config/kubeadm.py)."""
    key, text = given_text(cluster, where)
    if cluster.kind == kubeadm.KIND:
        return kubeadm.bootstrap_token(text, where, key)
    try:
        parsed = parse_token(text)
    except TokenError as exc:
        raise UserError(f"{where}: {key}: {exc}") from None
    if hash_problem(parsed):
        raise UserError(f"{where}: {key}: {hash_problem(parsed)}")
    check_role(parsed, cluster, f"{where}: {key}")
    warn_server_token_on_agents(parsed, cluster, f"{where}: {key}")
    return Secret(pinned(parsed, cluster, where, key))


SERVER_TOKEN_RISK = (
    "which also opens /v1-k3s/server-bootstrap and its CA keys (K3s router.go: serverAuthed), so"
    " one stolen Pi exposes the cluster's PKI"
)


def warn_server_token_on_agents(token: Token, cluster: Cluster, where: str) -> None:
    """One warning line when the agents' image carries the server token, or may: K3s accepts
    the server's credentials on every server route."""
    if cluster.role != "agent" and not cluster.create:
        return
    if cluster.create:
        if not cluster.agent_token:
            log.warning(
                "warning: %s: cluster.agent_token is false, so every agent carries the server"
                " token, %s; leave it true (the default) for an agent-only token",
                where.rsplit(": ", 1)[0],
                SERVER_TOKEN_RISK,
            )
        return
    fix = "use an agent token (K10...::node:..., `k3s token create` makes a bootstrap one)"
    if token.username == "server":
        log.warning("warning: %s: a server token on agents, %s; %s", where, SERVER_TOKEN_RISK, fix)
    elif token.form == "short":
        log.warning(
            "warning: %s: a short token on agents is the server token unless the servers run with"
            " --agent-token, %s; %s",
            where,
            SERVER_TOKEN_RISK,
            fix,
        )


def check_role(token: Token, cluster: Cluster, where: str) -> None:
    """A server joins as user `server` on routes K3s guards for servers (k3s:server)."""
    if cluster.role != "server" or cluster.create:
        return
    if token.bootstrap:
        raise UserError(
            f"{where}: a bootstrap token cannot join a server (K3s accepts it for agents only); "
            "use the server token (K10...::server:...)"
        )
    if token.username == "node":
        raise UserError(
            f"{where}: an agent (node) token cannot join a server (servers authenticate as user "
            "server); use the server token (K10...::server:...)"
        )


def expected_hash(cluster: Cluster, where: str) -> str | None:
    """The CA hash cluster.ca_hash / cluster.ca_file pin, computed as K3s computes it."""
    from_file = None
    if cluster.ca_file is not None:
        try:
            body = cluster.ca_file.read_bytes()
        except OSError as exc:
            raise UserError(
                f"{where}: cluster.ca_file: {cluster.ca_file}: {exc.strerror}"
            ) from None
        if not x509.split(body):
            raise UserError(f"{where}: cluster.ca_file: {cluster.ca_file} holds no PEM certificate")
        from_file = x509.hash_ca(body)[0]
    if from_file and cluster.ca_hash and from_file != cluster.ca_hash:
        raise UserError(f"{where}: cluster.ca_hash: differs from the hash of cluster.ca_file")
    return from_file or cluster.ca_hash


def pinned(token: Token, cluster: Cluster, where: str, key: str) -> str:
    """The token the image carries: pinned to the server's CA, or refused unless allowed."""
    expected = expected_hash(cluster, where)
    if token.pinned:
        if expected and expected != token.ca_hash:
            raise UserError(
                f"{where}: {key}: the token's CA hash differs from cluster.ca_hash/ca_file"
            )
        return token.text()
    if expected:
        return token.pinned_text(expected, "server" if cluster.role == "server" else "node")
    if cluster.allow_unpinned:
        log.warning("warning: the join token pins no CA (cluster.allow_unpinned: true)")
        return token.text()
    raise UserError(
        f"{where}: {key}: this {FORM_NAMES[token.form]} carries no CA hash, so a device would "
        f"send its password to whichever server answers at {cluster.server}; pin it with "
        f"cluster.ca_hash or cluster.ca_file, or `pifleet token pin {cluster.server} "
        "--token-file F -o OUT`, or set cluster.allow_unpinned: true"
    )


FORM_NAMES = {
    "short": "short token",
    "bootstrap": "bootstrap token",
    "k10-user": "token",
    "k10-bootstrap": "token",
}


def one_line(text: str, prefix: str) -> None:
    """A token is one line of printable characters (a final newline aside): a second line or
    a NUL byte means the file is not what it was meant to be. Never shows the text."""
    value = text.strip()
    if "\0" in value:
        raise UserError(f"{prefix}the token holds a NUL byte: not a token")
    if "\n" in value or "\r" in value:
        raise UserError(f"{prefix}the token holds more than one line; give it on one line")
    if not value.isprintable():
        raise UserError(f"{prefix}the token holds a control or invisible character")


def _read_file(cluster: Cluster, where: str) -> str:
    path = cluster.token_file
    assert path is not None
    made_without = path.name == "agent-token" and os.path.lexists(path.with_name("token"))
    if cluster.create and made_without and not os.path.lexists(path):
        raise UserError(
            f"{where}: cluster.agent_token: {path} does not exist: this cluster was made"
            " without an agent token (cluster.agent_token is true by default); set"
            " cluster.agent_token: false to keep its agents on the server token (the build"
            " warns), or, before any server runs, move cluster/ away and run"
            f" `pifleet cluster init {where}` again"
        )
    if cluster.create and not os.path.lexists(path):
        raise UserError(
            f"{where}: cluster.create: no cluster yet ({path} does not exist);"
            f" run `pifleet cluster init {where}` first"
        )
    return _private_text(path, f"{where}: cluster.token_file: ")


def _private_text(path: Path, prefix: str) -> str:
    """The text of a token file that only its owner can read; one-line errors after `prefix`."""
    data = read_input(path, prefix, private=True)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{prefix}{path} is not a text file") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # as read_text() reads lines


def read_token_file(path: Path) -> Secret:
    """A token from a file named on the command line (`--token-file`): private to its owner
    like cluster.token_file; one-line errors, never the token."""
    text = _private_text(path, "--token-file: ")
    one_line(text, f"--token-file: {path}: ")
    try:
        parsed = parse_token(text)
    except TokenError as exc:
        raise UserError(f"--token-file: {path}: {exc}") from None
    return Secret(parsed.text())


def check_command(args: argparse.Namespace) -> int:
    """`pifleet token check`: the agent's own server check, from the operator's machine."""
    from firstboot.checkserver import check

    token = parse_token(read_token_file(Path(args.token_file)).reveal())
    ok, line = check(args.server, token, args.timeout, args.role)
    print(line if ok else f"error: {line}")
    return 0 if ok else 1
