"""K3s join tokens: `K10<sha256 of the CA bundle>::<user>:<password>`, bootstrap tokens
`abcdef.0123456789abcdef`, or short tokens (just a password, nothing pinned).

A token never appears in a message: `Token` has no readable repr.
"""

from __future__ import annotations

import re
from typing import Optional

_SECURE = re.compile(r"^K10([0-9a-f]{64})::([^:\s]+):(\S+)$")
_BOOTSTRAP = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")


class TokenError(ValueError):
    """The token is malformed; the message never contains the token."""


class Token:
    __slots__ = ("_password", "_text", "bootstrap", "ca_hash", "username")

    def __init__(
        self, text: str, ca_hash: Optional[str], username: str, password: str, bootstrap: bool
    ) -> None:
        self._text = text
        self.ca_hash = ca_hash
        self.username = username
        self._password = password
        self.bootstrap = bootstrap

    def password(self) -> str:
        return self._password

    def text(self) -> str:
        """The whole token, for K3s' own token file (0600) and nowhere else."""
        return self._text

    def authorization(self) -> str:
        """The Authorization header an agent sends: Basic node:<password>, or Bearer for bootstrap tokens."""
        import base64

        if self.bootstrap:
            return "Bearer " + self._password
        raw = ("node:" + self._password).encode()
        return "Basic " + base64.b64encode(raw).decode()

    def __repr__(self) -> str:
        return "Token(****)"

    __str__ = __repr__


def parse(text: str) -> Token:
    value = text.strip()
    if not value:
        raise TokenError("the token is empty")
    if any(c.isspace() for c in value):
        raise TokenError("the token contains whitespace")
    match = _SECURE.match(value)
    if match:
        return Token(value, match.group(1), match.group(2), match.group(3), bootstrap=False)
    if value.startswith("K10"):
        raise TokenError("malformed secure token (expected K10<64 hex CA hash>::<user>:<password>)")
    if _BOOTSTRAP.match(value):
        return Token(value, None, "", value, bootstrap=True)
    return Token(value, None, "node", value, bootstrap=False)
