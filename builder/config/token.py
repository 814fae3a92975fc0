"""Reading and checking the join token named by the config, without ever showing it."""

from __future__ import annotations

import argparse
import logging
import os
import stat
from pathlib import Path

from builder.config.model import Cluster
from builder.util.errors import UserError
from builder.util.secret import Secret
from firstboot.token import TokenError
from firstboot.token import parse as parse_token

log = logging.getLogger("pifleet.token")


def read_token(cluster: Cluster, where: str) -> Secret:
    """The token from cluster.token_file or cluster.token_env; `where` is the config file."""
    if cluster.token_file is not None:
        key, text = "cluster.token_file", _read_file(cluster, where)
    else:
        key = "cluster.token_env"
        text = os.environ.get(cluster.token_env or "", "")
        if not text.strip():
            raise UserError(
                f"{where}: {key}: environment variable {cluster.token_env} is not set or empty"
            )
    try:
        parsed = parse_token(text)
    except TokenError as exc:
        raise UserError(f"{where}: {key}: {exc}") from None
    if parsed.ca_hash is None:
        log.warning(
            "warning: the join token carries no CA hash, so devices cannot pin the server's CA; "
            "use the server's K10... secure token"
        )
    return Secret(parsed.text())


def _read_file(cluster: Cluster, where: str) -> str:
    path = cluster.token_file
    assert path is not None
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{where}: cluster.token_file: {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{where}: cluster.token_file: {path} is a directory") from None
    except UnicodeDecodeError:
        raise UserError(f"{where}: cluster.token_file: {path} is not a text file") from None
    except OSError as exc:
        raise UserError(f"{where}: cluster.token_file: {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("warning: %s is readable by other users; chmod 600 it", path)
    return text


def read_token_file(path: Path) -> Secret:
    """A token from a file named on the command line; one-line errors, never the token."""
    try:
        parsed = parse_token(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"{path}: cannot read the token: {exc.strerror}") from None
    except TokenError as exc:
        raise UserError(f"{path}: {exc}") from None
    return Secret(parsed.text())


def check_command(args: argparse.Namespace) -> int:
    """`pifleet token check`: the agent's own server check, from the operator's machine."""
    from firstboot.checkserver import check

    token = parse_token(read_token_file(Path(args.token_file)).reveal())
    ok, line = check(args.server, token, args.timeout)
    print(line if ok else f"error: {line}")
    return 0 if ok else 1
