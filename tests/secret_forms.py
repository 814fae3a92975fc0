"""Every form of secret the project knows, each with the part that must never be seen, and
the ways a secret reaches a log line: what the redactor tests and the card tests search for."""

from __future__ import annotations

HASH = "ab" * 32
SSH_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACDjKqp5Fc65tJ0RulDqCiirGxqB+Qv...\n"
    "-----END OPENSSH PRIVATE KEY-----"
)
# Every secret form the project knows, each with the part that must never be seen.
SECRETS: dict[str, str] = {
    f"K10{HASH}::server:s3rverPassw0rd": "s3rverPassw0rd",
    f"K10{HASH}::node:ag3ntPassw0rd": "ag3ntPassw0rd",
    f"K10{HASH}::abcdef.0123456789abcdef": "0123456789abcdef",
    "K10::server:unpinnedPw": "unpinnedPw",
    "qwerty.zyxwvutsrqponmlk": "zyxwvutsrqponmlk",  # bare bootstrap token
    "shortpassword123": "shortpassword123",  # a short (password) token
    "node-password-5f3a9c": "node-password-5f3a9c",
    "wifi-psk-Tr0ub4dor&3": "wifi-psk-Tr0ub4dor&3",
    SSH_KEY: "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ",
}


def carriers(secret: str) -> list[str]:
    """Ways a secret reaches a log line."""
    return [
        secret,
        f"token={secret}",
        f'{{"token": "{secret}"}}',
        f"Authorization: Basic {secret}",
        f"Authorization: Bearer {secret}",
        f"k3s-Node-Password: {secret}",
        f"psk: {secret}",
        f"https://node:{secret}@k3s.example.net:6443/v1-k3s/readyz",
    ]
