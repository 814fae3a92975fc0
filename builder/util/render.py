"""Renders the jinja2 templates in builder/templates/ (seed files, systemd units).

Values go into YAML through the `y` filter, which emits a JSON scalar (valid
YAML), so no user string can break the document structure.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import jinja2

from builder.util import bundled

TEMPLATES = bundled.package_dir("builder") / "templates"


def _yaml_scalar(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["y"] = _yaml_scalar
    return env


def render(name: str, **context: Any) -> bytes:
    return _environment().get_template(name).render(**context).encode()
