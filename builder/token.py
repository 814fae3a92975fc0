"""Reading and checking the join token named by the config, without ever showing it."""

from __future__ import annotations

import logging
import os
import re
import stat

from builder.config import Cluster
from builder.errors import UserError
from builder.secret import Secret

log = logging.getLogger("pifleet.token")

_SECURE = re.compile(r"^K10[0-9a-f]{64}::[^:\s]+:[^\s]+$")
_SECURE_PREFIX = re.compile(r"^K10[0-9a-f]{64}::")
_BOOTSTRAP = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")


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
    token = text.strip()
    if not token:
        raise UserError(f"{where}: {key}: the token is empty")
    if any(c.isspace() for c in token):
        raise UserError(f"{where}: {key}: the token contains whitespace or several lines")
    if token.startswith("K10") and not _SECURE.match(token):
        raise UserError(
            f"{where}: {key}: malformed secure token (expected K10<64 hex CA hash>::<user>:<password>)"
        )
    if not _SECURE_PREFIX.match(token):
        log.warning(
            "warning: the join token carries no CA hash, so devices cannot pin the server's CA; "
            "use the server's K10... secure token"
        )
    return Secret(token)


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


def is_secure(token: Secret) -> bool:
    return bool(_SECURE_PREFIX.match(token.reveal()))


def is_bootstrap(token: Secret) -> bool:
    return bool(_BOOTSTRAP.match(token.reveal()))
