"""config.txt: the fleet's `boot.config_txt` lines, each in its [section], edited in place.

config.txt is read top to bottom; a `[filter]` line (`[all]`, `[pi4]`, `[pi5]`, `[cm4]`...)
starts a section that applies to the boards it names, and lines before the first filter apply
to all. Each wanted line has an identity:

| line                    | identity        | so                                                 |
|-------------------------|-----------------|----------------------------------------------------|
| `dtparam=i2c_arm=on`    | `dtparam=i2c_arm` | `dtparam=i2c_arm=off` in the same section is changed |
| `dtoverlay=disable-bt`  | the whole line  | several overlays (or one overlay twice) may coexist |
| `enable_uart=1`, `k=v`  | `enable_uart`   | the value is changed in place                      |

The last active line with the same identity in any section with that filter (for `all`, the
lines before the first filter too) is replaced; else a commented-out `#line` identical to the
wanted one is uncommented; else the line is appended to the last section with that filter, or
a new `[filter]` section is appended at the end. Applying the same lines again
changes nothing. `hardware.pi5_4k_pages` adds `kernel=kernel8.img` under `[pi5]`.
"""

from __future__ import annotations

from dataclasses import dataclass

from builder.config.model import ConfigTxtLine, FleetConfig
from builder.disk.image import Image
from builder.plan import Plan

CONFIG_TXT = "/config.txt"
PI5_4K = ConfigTxtLine("pi5", "kernel=kernel8.img")


@dataclass
class Section:
    name: str  # filter without brackets; "all" for the lines before the first filter
    lines: list[str]  # including the [filter] line itself, when there is one


def wanted(config: FleetConfig) -> list[ConfigTxtLine]:
    lines = list(config.config_txt)
    if config.hardware.pi5_4k_pages and PI5_4K not in lines:
        lines.append(PI5_4K)
    return lines


def apply(image: Image, plan: Plan) -> None:
    edits = wanted(plan.config)
    if not edits:
        return
    raw = image.boot.read(CONFIG_TXT) or b""
    updated = edit(raw.decode("utf-8", errors="replace"), edits)
    image.boot.stage(CONFIG_TXT, updated.encode())


def identity(line: str) -> str:
    key, _, value = line.strip().partition("=")
    if key == "dtoverlay":
        return line.strip()
    if key == "dtparam":
        return f"dtparam={value.split('=', 1)[0]}"
    return key


def _active(line: str) -> bool:
    body = line.strip()
    return bool(body) and not body.startswith(("#", "["))


def edit(text: str, edits: list[ConfigTxtLine]) -> str:
    sections = parse(text)
    for item in edits:
        _place(sections, item)
    out = [line for section in sections for line in section.lines]
    return "\n".join(out) + "\n" if out else ""


def parse(text: str) -> list[Section]:
    sections = [Section("all", [])]
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            sections.append(Section(stripped[1:-1].strip(), [line]))
        else:
            sections[-1].lines.append(line)
    return sections


def _place(sections: list[Section], item: ConfigTxtLine) -> None:
    matching = [s for s in sections if s.name == item.section]
    if not matching:
        last = sections[-1]
        if last.lines and last.lines[-1].strip():
            last.lines.append("")
        sections.append(Section(item.section, [f"[{item.section}]", item.line]))
        return
    want = identity(item.line)
    places = [(s, i) for s in matching for i, _ in enumerate(s.lines)]
    active = [(s, i) for s, i in places if _active(s.lines[i]) and identity(s.lines[i]) == want]
    commented = [(s, i) for s, i in places if s.lines[i].strip().lstrip("#").strip() == item.line]
    if active or commented:
        found, index = (active or commented)[-1]
        found.lines[index] = item.line
        return
    section = matching[-1]
    end = len(section.lines)
    while end > 1 and not section.lines[end - 1].strip():
        end -= 1  # before the section's trailing blank lines
    section.lines.insert(end, item.line)
