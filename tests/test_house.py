"""The house rules, checked on the code itself (DESIGN.md "Layout", issue 13).

- Imports point one way: no import cycle between modules of builder/ and firstboot/,
  lazy imports inside functions included (a deferred cycle is still a cycle).
- firstboot/ is the device half: it never imports builder, and only the standard
  library (plus python3-systemd, optional).
- Small rooms: no module over 400 lines, no function over 60.

The checks read the source with `ast`, so they hold for code that is never run.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("builder", "firstboot")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def modules(root: Path = REPO) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the two packages under `root`."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imported(path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of `known` that the file at `path` imports, anywhere in the file."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        out.update(name for name in names if name in known)
    return out


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    known = modules(root)
    graph = {name: imported(path, known) - {name} for name, path in known.items()}
    # A package and its own modules are one room: `steps/__init__` listing its steps is no cycle.
    return {
        name: {t for t in targets if not (t.startswith(name + ".") or name.startswith(t + "."))}
        for name, targets in graph.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_cycle_detector_sees_a_lazy_cycle(tmp_path: Path) -> None:
    """The checker itself: a cycle closed only by an import inside a function is found."""
    (tmp_path / "builder" / "config").mkdir(parents=True)
    (tmp_path / "firstboot").mkdir()
    (tmp_path / "builder" / "__init__.py").write_text("")
    (tmp_path / "builder" / "config" / "__init__.py").write_text("")
    (tmp_path / "builder" / "config" / "a.py").write_text("from builder.config import b\n")
    (tmp_path / "builder" / "config" / "b.py").write_text(
        "def f():\n    from builder.config.a import x\n"
    )
    assert cycles(import_graph(tmp_path)) == [["builder.config.a", "builder.config.b"]]


def test_firstboot_stands_alone() -> None:
    """The device half runs on a stock image's python3: stdlib only, never builder."""
    allowed = set(sys.stdlib_module_names) | {"firstboot", "systemd"}
    bad = []
    for path in sorted((REPO / "firstboot").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            bad += [
                f"{path.relative_to(REPO)}:{node.lineno} {n}"
                for n in names
                if n.split(".")[0] not in allowed
            ]
    assert bad == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_room_sizes(name: str) -> None:
    path = modules()[name]
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") <= MAX_MODULE_LINES, f"{path}: split it by concern"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == [], f"{path}: functions over {MAX_FUNCTION_LINES} lines"
