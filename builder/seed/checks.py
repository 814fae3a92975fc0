"""Checks of generated seed files against their formats' own schemas (tests and `pifleet lint`).

rpi-preseed.toml: parsed with tomllib and checked against pifleet's JSON Schema of the keys it
writes (builder/templates/rpi-preseed.schema.json). user-data: cloud-init's own
`cloud-init schema --config-file`, when cloud-init is installed on the host.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from functools import lru_cache
from typing import Any

import jsonschema
import yaml

from builder.config.schema import key_path
from builder.util.private import private_dir, write_private
from builder.util.render import TEMPLATES

PRESEED_SCHEMA = TEMPLATES / "rpi-preseed.schema.json"


@lru_cache(maxsize=1)
def _preseed_validator() -> Any:
    schema = json.loads(PRESEED_SCHEMA.read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def preseed_problems(data: bytes) -> list[str]:
    """One line per problem of an rpi-preseed.toml ([] when valid)."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return [f"not valid TOML: {exc}"]
    errors = sorted(_preseed_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{key_path(e.absolute_path) or '(top)'}: {e.message}" for e in errors]


def cloud_config_problems(data: bytes) -> list[str] | None:
    """One line per problem `cloud-init schema` reports; None when cloud-init is not installed."""
    tool = shutil.which("cloud-init")
    if tool is None:
        return None
    try:
        if yaml.safe_load(data) is None:
            return []  # a bare "#cloud-config" (pi-gen's template): nothing to apply, not an error
    except yaml.YAMLError:
        pass  # cloud-init words the error
    # user-data may hold a host private key: a private, pid-named folder (a killed run's is
    # removed by the next), the file 0600 from its first byte.
    with private_dir("lint") as tmp:
        path = tmp / "user-data"
        write_private(path, data)
        proc = subprocess.run(
            [tool, "schema", "--config-file", str(path)], capture_output=True, text=True
        )
    if proc.returncode == 0:
        return []
    text = (proc.stderr + "\n" + proc.stdout).replace(str(path), "user-data")
    lines = []
    for line in text.replace("Error:", "\n").splitlines():
        line = line.strip()
        if line and not line.endswith(":"):  # "Cloud config schema deprecations:" with none
            lines.append(line)
    return lines or [f"cloud-init schema exited with {proc.returncode}"]
