"""Checks a fleet file against config/schema.json and words the first problem for a human."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from builder.util import bundled
from builder.util.errors import UserError
from builder.util.yamlfile import shown

SCHEMA_PATH = bundled.data("schema.json")
_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "empty",
}


@lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return schema


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    schema = _schema()
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def _resolved(node: dict[str, Any]) -> dict[str, Any]:
    """`node`, or the `$defs` entry its local "$ref" names; a list's item schema for an array."""
    if "$ref" in node:
        node = _schema()["$defs"][node["$ref"].removeprefix("#/$defs/")]
    return _resolved(node["items"]) if "items" in node else node


@cache
def _defaults(key: str) -> dict[str, Any]:
    node = _resolved(_schema())
    for part in key.split(".") if key else ():
        node = _resolved(node["properties"][part])
    return {k: p["default"] for k, p in node.get("properties", {}).items() if "default" in p}


def with_defaults(value: dict[str, Any], key: str) -> dict[str, Any]:
    """A copy of the mapping at `key` ("" the top, "cluster", "users" for each user, "network.wifi")
    with every absent property that has a "default" in the schema filled in: the one place
    defaults are written down. Whether the user gave a key is still asked of `value`."""
    return {**copy.deepcopy(_defaults(key)), **value}


def validate(raw: Any, source: Path) -> None:
    """Raise a one-line UserError for the most relevant schema violation in `raw`."""
    error = best_match(_validator().iter_errors(raw))
    if error is not None:
        key, message = describe(error)
        raise UserError(f"{source}: {key}: {message}" if key else f"{source}: {message}")


def key_path(parts: Iterable[Any]) -> str:
    """['devices', 3, 'hostname'] -> 'devices[3].hostname'."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe(error: ValidationError) -> tuple[str, str]:
    """(key path, message) for one schema error."""
    while error.validator in ("oneOf", "anyOf") and error.context:
        deeper = best_match(error.context)
        if deeper is None or (deeper.validator in ("type",) and len(error.context) > 1):
            return key_path(error.absolute_path), _one_of_message(error)
        error = deeper
    path = list(error.absolute_path)
    # jsonschema types these as "maybe unset"; a reported error always has them.
    kind: Any = error.validator
    schema: Any = error.schema
    value: Any = error.instance
    expected: Any = error.validator_value
    if isinstance(schema, dict) and "x-expected" in schema and kind != "type":
        return key_path(path), f"must be {schema['x-expected']}, got {shown(value)}"
    if kind == "additionalProperties":
        known = sorted(schema.get("properties", {}))
        extra = sorted(set(value) - set(known))
        hint = f" (expected one of: {', '.join(known)})" if known else ""
        return key_path([*path, extra[0]]), f"unknown key{hint}"
    if kind == "required":
        missing = next(k for k in expected if k not in value)
        return key_path(path), f"missing required key '{missing}'"
    if kind == "type":
        wanted = expected
        names = [
            _TYPE_NAMES.get(t, str(t)) for t in (wanted if isinstance(wanted, list) else [wanted])
        ]
        return key_path(path), f"must be {' or '.join(names)}, got {shown(value)}"
    if kind == "enum":
        choices = ", ".join(repr(c) for c in expected)
        return key_path(path), f"must be one of {choices}, got {shown(value)}"
    return key_path(path), error.message


def _one_of_message(error: ValidationError) -> str:
    kinds = []
    options: Any = error.validator_value
    for sub in options:
        kinds.append(
            _TYPE_NAMES.get(sub.get("type", ""), "a value") if isinstance(sub, dict) else "?"
        )
    return f"must be {' or '.join(dict.fromkeys(kinds))}, got {shown(error.instance)}"


def device_errors(raw: Any) -> list[ValidationError]:
    """Schema errors of one inventory row against the `devices:` item definition."""
    schema = _schema()
    item = {**schema["$defs"]["device"], "$defs": schema["$defs"]}
    cls = jsonschema.validators.validator_for(schema)
    error = best_match(cls(item).iter_errors(raw))
    return [error] if error is not None else []
