"""Reading YAML the strict way: syntax errors with line numbers, duplicate keys refused.

PyYAML silently keeps the last of two equal keys; in a fleet file that hides
mistakes (two `server:` lines), so duplicates are an error here.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from pathlib import Path
from typing import Any

import yaml

from builder.util.errors import UserError


class _StrictLoader(yaml.SafeLoader):
    pass


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _value in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(
                None, None, "a list or mapping cannot be a key", key_node.start_mark
            )
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {seen[key]})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


MAX_BYTES = 1024 * 1024  # a fleet file of a thousand devices is about 100 KiB
MAX_NODES = 100_000  # values after alias expansion: an alias bomb stops here
MAX_DEPTH = 32  # levels of nesting: the schema's deepest key has 5
MAX_SHOWN = 60  # characters of a value echoed in an error


def shown(value: object) -> str:
    """`repr(value)`, cut short for an error line."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 5] + f"...{text[-1]}"


def read_text(path: Path, what: str = "file", limit: int = MAX_BYTES) -> str:
    """The UTF-8 text of `path`, at most `limit` bytes; one-line errors naming the file."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer would wait forever; it is refused below.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            kind = os.fstat(f.fileno()).st_mode
            if stat.S_ISFIFO(kind) or stat.S_ISSOCK(kind):
                raise UserError(f"{path}: is a FIFO or socket, expected a {what}")
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a {what}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > limit:
        raise UserError(f"{path}: larger than {limit // 1024} KiB: not a {what}")
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise UserError(f"{path}:{line}: NUL byte: a binary file, not a {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(f"{path}:{line}: not UTF-8 text: not a {what}") from None


def read_yaml(path: Path, what: str = "file") -> Any:
    """Parse `path`; every problem is a one-line UserError naming the file (and line)."""
    data = parse_yaml(read_text(path, what), path)
    if data is None:
        raise UserError(f"{path}: {what} is empty")
    check_values(data, path)
    return data


def parse_yaml(text: str, path: Path) -> Any:
    """`text` parsed the strict way (no duplicate keys, no list or mapping as a key); every
    problem is a one-line UserError naming `path` and the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = " ".join((exc.problem or exc.context or "invalid YAML").split())
        raise UserError(f"{path}{line}: YAML error: {problem}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: YAML error: {shown(str(exc))}") from None
    except RecursionError:
        raise UserError(f"{path}: YAML error: nested too deeply") from None


def check_values(data: Any, path: Path) -> None:
    """Refuse an alias bomb (too many values once expanded) and control or invisible
    characters in any key or value; the error names the key."""
    budget = [MAX_NODES]

    def walk(node: Any, key: str, depth: int) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise UserError(f"{path}: more than {MAX_NODES} values once aliases are expanded")
        if depth > MAX_DEPTH:
            raise UserError(f"{path}: {key}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, str):
            _check_text(node, key, path)
        elif isinstance(node, dict):
            for k, v in node.items():
                name = _key_name(k)
                _check_text(str(k), f"{key}.{name}" if key else name, path)
                walk(v, f"{key}.{name}" if key else name, depth + 1)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{key}[{i}]", depth + 1)

    walk(data, "", 0)


def _key_name(key: object) -> str:
    """A key as an error names it: as written, or quoted and cut short when it holds
    anything but printable characters (a newline would split the error line)."""
    text = str(key)
    return text if text.isprintable() and len(text) <= MAX_SHOWN else shown(text)


def _check_text(text: str, key: str, path: Path) -> None:
    for i, char in enumerate(text):
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            raise UserError(
                f"{path}: {key}: control or invisible character U+{ord(char):04X} at "
                f"position {i + 1} of {shown(text)}"
            )
