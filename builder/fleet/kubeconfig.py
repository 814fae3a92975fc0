"""A kubeconfig, checked before the Kubernetes client reads it: every problem is one line.

The official client reads a kubeconfig as kubectl does (contexts, clusters, users, exec
plugins) but fails on bad input with whatever Python raises: a YAML error, a list instead of
a mapping, bytes that are not UTF-8, bad base64 in `*-data`, or an alias bomb whose error
message is megabytes long. `check` refuses each first, in one line naming the file and key;
the client then reads the same file as before (relative paths, exec plugins, persisting a
refreshed token).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

import yaml

from builder.util.deadline import track
from builder.util.errors import UserError
from builder.util.terminal import inert
from builder.util.yamlfile import check_values, read_text, shown

MAX_BYTES = 4 * 1024 * 1024  # kubeconfigs with embedded certificates are a few KiB each
# (list key, entry key, keys holding base64 data)
SECTIONS = (
    ("clusters", "cluster", ("certificate-authority-data",)),
    ("users", "user", ("client-certificate-data", "client-key-data")),
    ("contexts", "context", ()),
)


def check(path: Path) -> dict[str, Any]:
    """The parsed kubeconfig at `path`, or a one-line UserError saying what is wrong where."""
    text = read_text(path, "kubeconfig", MAX_BYTES)
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise UserError(f"{path}{line}: not a kubeconfig: YAML error: {problem}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not a kubeconfig: YAML error: {shown(str(exc))}") from None
    check_values(data, path)  # an alias bomb or a control character, named in one line
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a kubeconfig: {_kind(data)}, not a mapping")
    for section, entry, data_keys in SECTIONS:
        _check_section(path, data, section, entry, data_keys)
    current = data.get("current-context")
    if current is not None and not isinstance(current, str):
        raise UserError(f"{path}: current-context is {_kind(current)}, not a name")
    return data


def api_client(path: Path) -> tuple[Any, str]:
    """A Kubernetes API client for the kubeconfig at `path` (checked first), its connections
    under `Deadline`, and the server's address for messages; one-line UserError otherwise."""
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    check(path)
    try:
        client = config.new_client_from_config(str(path))  # type: ignore[no-untyped-call]
    except (ConfigException, ValueError, TypeError, AttributeError, KeyError, OSError) as exc:
        raise UserError(f"{path}: not a usable kubeconfig: {short(exc)}") from None
    track(client.rest_client.pool_manager)
    return client, inert(str(client.configuration.host))


def _check_section(
    path: Path, data: dict[str, Any], section: str, entry: str, data_keys: tuple[str, ...]
) -> None:
    items = data.get(section)
    if items is None:
        return
    if not isinstance(items, list):
        raise UserError(f"{path}: {section} is {_kind(items)}, not a list")
    for index, item in enumerate(items):
        where = f"{path}: {section}[{index}]"
        if not isinstance(item, dict):
            raise UserError(f"{where} is {_kind(item)}, not a mapping")
        if not isinstance(item.get("name"), str):
            raise UserError(f"{where}.name is missing or not a string")
        body = item.get(entry)
        if body is None:
            continue
        if not isinstance(body, dict):
            raise UserError(f"{where}.{entry} is {_kind(body)}, not a mapping")
        for key in data_keys:
            if body.get(key) is not None:
                _check_base64(body[key], f"{where}.{entry}.{key}")


def _check_base64(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise UserError(f"{where} is {_kind(value)}, not base64 text")
    try:
        base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise UserError(f"{where} is not valid base64") from None


def _kind(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "true/false"}
    if value is None:
        return "empty"
    return names.get(type(value), f"a {type(value).__name__}")


def short(exc: BaseException, limit: int = 200) -> str:
    """An exception's text as one short, inert line (a library's message can be huge)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return inert(text)
