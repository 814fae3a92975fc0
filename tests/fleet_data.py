"""A fleet file as data: a valid config, every settable key of the schema as a path (`[]` for
list items), and a config with one key set to a value; for the bad-input and fuzz tests."""

from __future__ import annotations

import copy
from typing import Any

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@laptop"
VALID: dict[str, Any] = {
    "name": "edge-fleet",
    "base": {"path": "base.img"},
    "cluster": {"server": "https://k3s.example.net:6443", "token_file": "token"},
    "users": [{"name": "ops", "ssh_authorized_keys": [KEY]}],
    "devices": [{"hostname": "pi-1"}],
}


def schema_keys(node: dict[str, Any], defs: dict[str, Any], prefix: str = "") -> list[str]:
    """Every settable key of the schema, as a path with [] for list items."""
    if "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[1]]
    keys = [prefix] if prefix else []
    variants = [node, *node.get("oneOf", [])]
    objects = [v for v in variants if v.get("type") == "object" and "properties" in v]
    if objects and prefix and not any(v.get("type") == "string" for v in variants):
        keys = []  # a section, not a value of its own
    for variant in objects:
        for name, sub in variant["properties"].items():
            keys += schema_keys(sub, defs, f"{prefix}.{name}" if prefix else name)
    items = node.get("items")
    if isinstance(items, dict) and "$ref" in items:
        items = defs[items["$ref"].rsplit("/", 1)[1]]
    if node.get("type") == "array" and isinstance(items, dict) and "properties" in items:
        keys = schema_keys(items, defs, f"{prefix}[]")
    return keys


def concrete(path: str) -> str:
    return path.replace("[]", "[0]")


def merge(into: Any, extra: Any) -> Any:
    if isinstance(into, dict) and isinstance(extra, dict):
        for key, value in extra.items():
            into[key] = merge(into[key], value) if key in into else copy.deepcopy(value)
        return into
    if isinstance(into, list) and isinstance(extra, list):
        return [merge(a, b) for a, b in zip(into, extra, strict=False)] + into[len(extra) :]
    return copy.deepcopy(extra)


def config_with(path: str, value: Any, extra: dict[str, Any]) -> dict[str, Any]:
    config = merge(copy.deepcopy(VALID), extra)
    node: Any = config
    parts = concrete(path).replace("[0]", ".0").split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[parts[-1]] = value
    return config
