"""Text from outside (a card, a cluster) made inert before it reaches a terminal.

An escape sequence in what a card or a server says could retitle the terminal, clear it,
move the cursor to overwrite a line, or write the clipboard (OSC 52). `inert` shows every
such character as a visible escape (`\\x1b`, `\\u202e`) instead: C0 and C1 controls, DEL,
format characters (bidirectional overrides), line and paragraph separators, and lone
surrogates (which could not even be encoded). Newlines are escaped too: one value is one line.
"""

from __future__ import annotations

import re
import unicodedata

_UNSAFE_CATEGORIES = ("Cc", "Cf", "Cs", "Zl", "Zp")
_CANDIDATE = re.compile(r"[^\x20-\x7e]")  # printable ASCII is always safe: only look beyond it


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _shown(match: re.Match[str]) -> str:
    char = match.group()
    return _escape(char) if unicodedata.category(char) in _UNSAFE_CATEGORIES else char


def inert(text: str) -> str:
    """`text` with every control, format and separator character escaped (newline included)."""
    return _CANDIDATE.sub(_shown, text)


def inert_lines(text: str) -> str:
    """Several lines: each line made inert, the newlines between them kept."""
    return "\n".join(inert(line) for line in text.split("\n"))
