"""The house rules, checked on the code itself (the layout in README's "How it works", issue 13).

- Imports point one way: no import cycle between modules of builder/ and firstboot/,
  lazy imports inside functions included (a deferred cycle is still a cycle), and none
  between the packages of builder/.
- firstboot/ is the device half: it never imports builder, and only the standard
  library (plus python3-systemd, optional).
- Small rooms: no module over 400 lines, no function over 60.
- One owner per concept: the device's secret files are named in firstboot/secrets.py's table
  only, and the join's states in firstboot/state.py's; pyproject.toml alone says the version.
  The paths pifleet writes into an image are builder/layout.py's, and each seed format is one
  SeedFormat record in builder/seed/formats.py.

The checks read the source with `ast`, so they hold for code that is never run.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder import version
from builder.steps import agent
from firstboot import secrets, state
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


def package_graph(root: Path = REPO) -> dict[str, set[str]]:
    """The import graph between the rooms of builder/ (its packages and top-level modules):
    builder.seed.cloudinit counts as builder.seed."""

    def room(name: str) -> str:
        return ".".join(name.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for name, targets in import_graph(root).items():
        graph.setdefault(room(name), set()).update(
            room(t) for t in targets if room(t) != room(name)
        )
    return graph


def test_packages_import_one_way() -> None:
    """Later stages import earlier ones, folder by folder too: no two packages import each other,
    even through different modules (detect/ reads seed/'s format records, so seed/ never
    imports detect/; bases/ builds on disk/ and sources/ on bases/, never back)."""
    assert cycles(package_graph()) == []


def test_package_cycle_detector_sees_a_cycle_between_folders(tmp_path: Path) -> None:
    """The checker itself: a.x imports b.y and b.z imports a.w, no module cycle, a folder one."""
    for folder in ("a", "b"):
        (tmp_path / "builder" / folder).mkdir(parents=True)
        (tmp_path / "builder" / folder / "__init__.py").write_text("")
    (tmp_path / "firstboot").mkdir()
    (tmp_path / "builder" / "__init__.py").write_text("")
    (tmp_path / "builder" / "a" / "x.py").write_text("from builder.b import y\n")
    (tmp_path / "builder" / "a" / "w.py").write_text("")
    (tmp_path / "builder" / "b" / "y.py").write_text("")
    (tmp_path / "builder" / "b" / "z.py").write_text("from builder.a import w\n")
    assert cycles(import_graph(tmp_path)) == []
    assert cycles(package_graph(tmp_path)) == [["builder.a", "builder.b"]]


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


def strings(tree: ast.AST) -> Iterator[ast.Constant]:
    """The string constants of `tree`, docstrings left out (they may describe what they like)."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            yield node


# Besides the table, the modules whose constants it names: joinconfig (the builder-agent contract:
# /etc/pifleet/token, the boot partition's pifleet/token and pifleet/node-password) and k3sfiles
# (K3s's own files).
# kubeadm_join.py: its "token" is the JoinConfiguration's field, which holds the token
SECRET_OWNERS = ("secrets.py", "joinconfig.py", "k3sfiles.py", "kubeadm_join.py")


def names_a_secret(text: str) -> bool:
    """Whether `text` is one of the table's paths, or a path or file name ending in one's name."""
    paths = {secrets.SEED_DIR} | {p for s in secrets.SECRETS for p in (s.path, s.kept) if p}
    files = {p.rsplit("/", 1)[-1] for p in paths - {secrets.SEED_DIR}}
    return text in paths or any(text == f or text.endswith("/" + f) for f in files)


def test_only_the_secrets_table_names_secret_files() -> None:
    """Every file of the device that holds a secret is named in firstboot/secrets.py (what it is,
    where the image puts it, where custody keeps it, whether cleanup deletes it), not again in
    custody, collect or the agent."""
    bad = []
    for path in sorted((REPO / "firstboot").glob("*.py")):
        if path.name in SECRET_OWNERS:
            continue
        for node in strings(ast.parse(path.read_text(encoding="utf-8"))):
            if names_a_secret(node.value):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}")
    assert bad == []


def test_no_module_lists_secret_files_but_the_table() -> None:
    """A tuple or list naming two or more secret files (the lists of what to redact, move or
    delete) is made from the table, never spelled out again beside it."""
    constants = {
        name
        for module in (secrets, secrets.joinconfig, secrets.k3sfiles)
        for name, value in vars(module).items()
        if (isinstance(value, str) and names_a_secret(value)) or isinstance(value, secrets.Secret)
    } | {"token_file", "MOVED_NODE_PASSWORD"}
    assert {"FLEET_TOKEN_PATH", "BOOT_TOKEN_FILE", "NODE_PASSWORD_PATH", "BOOT_TOKEN"} <= constants
    bad = []
    for path in sorted((REPO / "firstboot").glob("*.py")):
        if path.name == "secrets.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Tuple | ast.List | ast.Set):
                continue
            named = [
                n
                for n in ast.walk(node)
                if (isinstance(n, ast.Name) and n.id in constants)
                or (isinstance(n, ast.Attribute) and n.attr in constants)
                or (
                    isinstance(n, ast.Constant)
                    and isinstance(n.value, str)
                    and names_a_secret(n.value)
                )
            ]
            if len(named) >= 2:
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert bad == []


def test_the_state_names_are_listed_once() -> None:
    """firstboot/state.py's STATES is the one list of the join's states, in order, with what the
    console says in each: the agent's handlers, its texts and the tests take it from there."""
    names = set(state.ORDER)
    bad = []
    for path in sorted([*(REPO / "firstboot").glob("*.py"), *(REPO / "tests").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Tuple | ast.List | ast.Set):
                items: list[ast.expr | None] = list(node.elts)
            elif isinstance(node, ast.Dict):
                items = list(node.keys)
            else:
                continue
            found = [n for n in items if isinstance(n, ast.Constant) and n.value in names]
            if len(found) >= 3:
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert bad == []


def test_the_version_has_one_source(tmp_path: Path) -> None:
    """pyproject.toml says the version: firstboot/__init__.py does not repeat it, and the agent's
    copy in an image says it on a python3 with no pip metadata (a device's)."""
    source = REPO / "firstboot" / "__init__.py"
    assigned = [
        node.lineno
        for node in ast.parse(source.read_text(encoding="utf-8")).body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        and "__version__" in {t.id for t in ast.walk(node) if isinstance(t, ast.Name)}
    ]
    assert assigned == []
    copy = agent.agent_source(source, source.parent)
    # The one version the copy names is the version (`pifleet inspect` reads it with this regex).
    assert re.findall(rb'__version__ = "([^"]+)"', copy) == [version().encode()]
    (tmp_path / "firstboot").mkdir()
    (tmp_path / "firstboot" / "__init__.py").write_bytes(copy)
    proc = subprocess.run(
        [sys.executable, "-S", "-c", "import firstboot; print(firstboot.__version__)"],
        cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)}, capture_output=True, text=True,
    )  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, version() + "\n"), proc.stderr
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert version() == pyproject["project"]["version"]  # the installed distribution's


# cmdline.txt is builder/seed/cmdline.py's: it parses, edits and stages the line. Beside it, the
# QEMU bases write a first one from scratch and the boot test reads what the guest left.
CMDLINE_OWNER = "builder/seed/cmdline.py"
CMDLINE_NAMERS = {CMDLINE_OWNER, "builder/bases/debian.py", "builder/qemu/power.py"}


def _cmdline_path(text: str) -> bool:
    return text == "cmdline.txt" or text.endswith("/cmdline.txt")


def _writes(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name == "stage" or name.startswith("write") or name.startswith("replace")


def test_only_the_cmdline_module_writes_cmdline_txt() -> None:
    """One owner of the kernel command line: no other module spells cmdline.txt's path (a string
    "cmdline.txt" or ending in "/cmdline.txt"), and no other module hands the owner's CMDLINE to a write (stage,
    write*, replace*): the steps and personalize call builder/seed/cmdline.py instead."""
    bad = []
    for path in sorted(modules().values()):
        where = path.relative_to(REPO).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if where not in CMDLINE_NAMERS:
            bad += [f"{where}:{n.lineno}" for n in strings(tree) if _cmdline_path(n.value)]
        if where == CMDLINE_OWNER:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _writes(node):
                args = [*node.args, *(k.value for k in node.keywords)]
                named = {
                    n.id if isinstance(n, ast.Name) else n.attr
                    for a in args
                    for n in ast.walk(a)
                    if isinstance(n, ast.Name | ast.Attribute)
                }
                if "CMDLINE" in named:
                    bad.append(f"{where}:{node.lineno} writes CMDLINE")
    assert bad == []


def layout_paths() -> dict[str, str]:
    """Every path builder/layout.py names (its tuples' members too) -> the constant's name."""
    from builder import layout

    found: dict[str, str] = {}
    for name, value in vars(layout).items():
        if name.isupper():
            for text in value if isinstance(value, tuple) else (value,):
                found[text] = name
    return found


def test_image_paths_are_spelled_in_the_layout_only() -> None:
    """builder/layout.py is the one list of the paths pifleet writes into an image (the seed files,
    the agent and its units, K3s, the config it edits, the image's helpers the seeds call): no
    other module of builder/ spells one as a string (tests may: they check the layout)."""
    paths = layout_paths()
    assert {"FIRSTRUN", "WANTS_LINK", "IMAGER_CUSTOM", "K3S_PATH", "USER_DATA"} <= set(
        paths.values()
    )
    bad = []
    for path in sorted((REPO / "builder").rglob("*.py")):
        if path.name == "layout.py" and path.parent.name == "builder":
            continue
        for node in strings(ast.parse(path.read_text(encoding="utf-8"))):
            if node.value in paths:
                where = path.relative_to(REPO).as_posix()
                bad.append(f"{where}:{node.lineno} {node.value!r} (layout.{paths[node.value]})")
    assert bad == []


def test_the_device_names_the_wants_link_as_the_layout_does() -> None:
    """firstboot/ never imports builder/, so the agent keeps its own copy of the unit's wants
    link (it removes it once joined): the two must be one path."""
    from builder import layout
    from firstboot import machine

    assert machine.WANTS_LINK == layout.WANTS_LINK


def test_every_seed_module_has_one_registered_seed_format() -> None:
    """Each module of builder/seed/ that renders a seed (a top-level `render`) has one SeedFormat
    record, of its own renderer, listed in builder/seed/formats.py's FORMATS: detection, the
    seed.format check, the renderers and `inspect` all read what a format needs from there."""
    import importlib

    from builder.seed import formats
    from builder.seed.base import SeedFormat

    renderers = sorted(
        path.stem
        for path in (REPO / "builder" / "seed").glob("*.py")
        if any(
            isinstance(n, ast.FunctionDef) and n.name == "render"
            for n in ast.parse(path.read_text(encoding="utf-8")).body
        )
        and path.stem != "formats"
    )
    assert {"cloudinit", "preseed", "systemd"} <= set(renderers)
    for stem in renderers:
        module = importlib.import_module(f"builder.seed.{stem}")
        records = [v for v in vars(module).values() if isinstance(v, SeedFormat)]
        assert len(records) == 1, f"builder/seed/{stem}.py: one SeedFormat record"
        assert records[0] in formats.FORMATS and records[0].render is module.render, stem
    names = [name for f in formats.FORMATS for name in f.names]
    assert len(names) == len(set(names)) and set(names) == set(formats.RENDERERS)
    schema = json.loads((REPO / "config" / "schema.json").read_text(encoding="utf-8"))
    assert set(schema["properties"]["seed"]["properties"]["format"]["enum"]) == set(names)


def imported_test_modules(source: str) -> list[str]:
    """The test modules (tests/test_*.py) that Python `source` imports, however spelled:
    `tests.test_x`, `from tests import test_x`, a relative import, or `"tests.test_x"` as a
    string (importlib, pytest_plugins)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            names = [base, *(f"{base}.{alias.name}".lstrip(".") for alias in node.names)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value] if re.fullmatch(r"tests\.test_\w+", node.value) else []
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "tests" and len(parts) > 1:
                parts = parts[1:]
            if len(parts) == 1 and parts[0].startswith("test_") and name not in found:
                found.append(name)
    return found


def test_no_module_imports_a_test_module() -> None:
    """Test modules hold tests; what several use lives in a helper module (tests/image_read.py,
    tests/boot_helpers.py...) or in conftest.py. No module of tests/ or bench/ imports a test
    module, so each test file reads as its claims."""
    assert imported_test_modules("from tests.test_build import fat_read") == ["tests.test_build"]
    assert imported_test_modules("from tests import test_boot") == ["tests.test_boot"]
    assert imported_test_modules("from .test_flash import run") == ["test_flash"]
    assert imported_test_modules("import importlib\nimportlib.import_module('tests.test_x')") == [
        "tests.test_x"
    ]
    assert imported_test_modules("from tests.conftest import test_token") == []
    bad = [
        f"{path.relative_to(REPO).as_posix()} imports {name}"
        for path in sorted([*(REPO / "tests").rglob("*.py"), *(REPO / "bench").glob("*.py")])
        if path.name != "test_house.py"  # its examples above name test modules
        for name in imported_test_modules(path.read_text(encoding="utf-8"))
    ]
    assert bad == [], "test modules imported as libraries (move the helper out): " + str(bad)
