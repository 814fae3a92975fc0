"""Removes secrets from text the agent keeps where anyone can read it (the boot partition,
a support bundle): join tokens of every K3s form, node passwords, Wi-Fi keys, private
keys, HTTP credentials, and any exact secret value the agent knows.

What stays is what helps a person: the token's form and CA hash, the user name,
the bootstrap token's id (`k3s token list` shows it, it is not the secret).
"""

from __future__ import annotations

import re
from typing import Iterable, List

MASK = "<redacted>"
_MIN_EXACT = 4  # shorter "secrets" would mask ordinary words

_PATTERNS = [
    # K10<hash>::<user>:<password>  and  K10<hash>::<id>.<secret>
    (re.compile(r"(K10[0-9a-fA-F]*::[^:\s\"']*:)[^\s\"',;]+"), r"\1" + MASK),
    (re.compile(r"(K10[0-9a-fA-F]*::[a-z0-9]{6}\.)[a-z0-9]{16}"), r"\1" + MASK),
    # a bare bootstrap token <id>.<secret>
    (re.compile(r"\b([a-z0-9]{6}\.)[a-z0-9]{16}\b"), r"\1" + MASK),
    # PEM private keys, whole blocks (also when newlines became spaces or \n)
    (
        re.compile(
            r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", re.DOTALL
        ),
        r"-----BEGIN \1PRIVATE KEY----- " + MASK + r" -----END \1PRIVATE KEY-----",
    ),
    (re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*", re.DOTALL), MASK),
    # HTTP credentials and headers
    (re.compile(r"(?i)(authorization:\s*(basic|bearer)\s+)\S+"), r"\1" + MASK),
    (re.compile(r"(?i)(k3s-node-password:\s*)\S+"), r"\1" + MASK),
    (re.compile(r"(https?://[^:/\s]+:)[^@/\s]+@"), r"\1" + MASK + "@"),
    # key=value / key: value / "key": "value" for secret-looking keys
    (
        re.compile(
            r"(?i)(\"?\b(?:password|passwd|psk|token|secret|agent[-_]token|k3s_token|"
            r"k3s_agent_token|node[-_]password)\b\"?\s*[:=]\s*\"?)[^\s\"',}]+"
        ),
        r"\1" + MASK,
    ),
]


_KEY_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_KEY_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY-----")


class Redactor:
    """`clean(text)`: `text` with every known secret form and every value in `secrets` masked."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = {s.strip() for s in secrets if s and len(s.strip()) >= _MIN_EXACT}
        self.exact: List[str] = sorted(values, key=len, reverse=True)

    def clean(self, text: str) -> str:
        for value in self.exact:
            text = text.replace(value, MASK)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def lines(self, lines: Iterable[str]) -> List[str]:
        """Line by line, masking every line of a private key that spans several lines."""
        out: List[str] = []
        inside = False
        for line in lines:
            if inside or _KEY_BEGIN.search(line):
                inside = not _KEY_END.search(line)
                out.append(MASK)
            else:
                out.append(self.clean(line))
        return out


_CONFIG_SECRET = re.compile(
    r"(?im)^\s*\"?(?:password|psk|wpa-psk)\"?\s*[:=]\s*[\"']?([^\"'\n]+?)[\"']?\s*$"
)


def secrets_in_config(text: str) -> List[str]:
    """Wi-Fi keys and passwords in a network config (netplan, NetworkManager keyfile)."""
    return [m.group(1) for m in _CONFIG_SECRET.finditer(text)]
