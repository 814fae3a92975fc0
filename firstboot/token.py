"""K3s join tokens, parsed exactly as K3s parses them (pkg/clientaccess/token.go:parseToken):

  K10<hash>::<user>:<password>   hash empty or 64 characters; user may be empty
  K10<hash>::<id>.<secret>       a bootstrap token (`k3s token create`), sent as Bearer
  K10<user>:<password>           no `::`: no hash, the rest are the credentials
  <id>.<secret>                  bare bootstrap token: no hash
  anything else                  a short token: the whole text is the password

`K10` is case-sensitive (`k10...` is a password). The agent always authenticates as
`node` (K3s: WithUser("node")), a joining server as `server`. A token is pinned when it
carries a CA hash. A token never appears in a message: `Token` has no readable repr.
"""

from __future__ import annotations

import base64
import re
from typing import Sequence

from firstboot.paths import Root

_BOOTSTRAP = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
HASH_LENGTH = 64
FORMS = {
    "k10-user": "K10<hash>::<user>:<password>",
    "k10-bootstrap": "K10<hash>::<id>.<secret> (bootstrap token)",
    "bootstrap": "bootstrap token <id>.<secret> without a CA hash",
    "short": "short token (a password without a CA hash)",
}


class TokenError(ValueError):
    """The token is malformed; the message never contains the token."""


class Token:
    __slots__ = ("_password", "_text", "bootstrap", "ca_hash", "form", "username")

    def __init__(
        self, text: str, ca_hash: str, username: str, password: str, bootstrap: bool
    ) -> None:
        self._text = text
        self.ca_hash = ca_hash or None
        self.username = username
        self._password = password
        self.bootstrap = bootstrap
        if bootstrap:
            self.form = "k10-bootstrap" if ca_hash else "bootstrap"
        else:
            self.form = "k10-user" if ca_hash else "short"

    @property
    def pinned(self) -> bool:
        return self.ca_hash is not None

    def password(self) -> str:
        return self._password

    def text(self) -> str:
        """The whole token as given, for files mode 0600 and nowhere else."""
        return self._text

    def authorization(self, user: str = "node") -> str:
        """What K3s sends: Bearer for a bootstrap token, else Basic <user>:<password>."""
        if self.bootstrap:
            return "Bearer " + self._password
        raw = (user + ":" + self._password).encode()
        return "Basic " + base64.b64encode(raw).decode()

    def pinned_text(self, ca_hash: str, user: str) -> str:
        """`K10<ca_hash>::<user>:<password>` (or `::<id>.<secret>`): the form K3s rewrites
        a validated token to, so K3s keeps the pin on every later start."""
        creds = self._password if self.bootstrap else user + ":" + self._password
        return "K10" + ca_hash + "::" + creds

    def __repr__(self) -> str:
        return "Token(****)"

    __str__ = __repr__


def parse(text: str) -> Token:
    """A Token, or TokenError with one line naming what is wrong (never the token)."""
    value = text.strip()
    if not value:
        raise TokenError("the token is empty")
    if not value.startswith("K10"):
        if _BOOTSTRAP.match(value):
            return Token(value, "", "", value, bootstrap=True)
        return Token(value, "", "", value, bootstrap=False)
    rest = value[3:]
    ca_hash, sep, creds = rest.partition("::")
    if not sep:
        ca_hash, creds = "", rest
    if ca_hash and len(ca_hash) != HASH_LENGTH:
        raise TokenError(
            "invalid token CA hash length: the part between K10 and '::' has "
            + str(len(ca_hash))
            + " characters, a sha256 has 64"
        )
    if _BOOTSTRAP.match(creds):
        return Token(value, ca_hash, "", creds, bootstrap=True)
    user, colon, password = creds.partition(":")
    if not colon:
        where = "after '::'" if sep else "after K10"
        raise TokenError(
            "invalid token format: "
            + where
            + " expected <user>:<password> or a bootstrap token <6 [a-z0-9]>.<16 [a-z0-9]>"
        )
    if not password:
        raise TokenError("invalid token format: the password after '" + user + ":' is empty")
    return Token(value, ca_hash, user, password, bootstrap=False)


def hash_problem(token: Token) -> str:
    """Why the token's CA hash can never match (K3s compares lowercase hex), or ''."""
    if token.ca_hash and not re.match(r"^[0-9a-f]{64}$", token.ca_hash):
        return "the token's CA hash is not 64 lowercase hex digits, so it can never match"
    return ""


def read_first(root: Root, paths: Sequence[str], role: str) -> Token:
    """The token in the first of `paths` that exists (the boot partition's before the image's),
    checked as K3s checks it; TokenError naming the file, never the token."""
    for path in paths:
        try:
            raw = root(path).read_bytes()
        except FileNotFoundError:
            continue
        try:
            token = parse(raw.decode("utf-8", "replace"))
        except TokenError as exc:
            raise TokenError(path + ": " + str(exc)) from None
        problem = hash_problem(token)
        if problem:
            raise TokenError(path + ": " + problem)
        if role == "server" and token.bootstrap:
            raise TokenError(path + ": a bootstrap token cannot join a server (agents only)")
        return token
    raise TokenError("no join token at " + " or ".join(paths))
