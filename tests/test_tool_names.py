"""Names that reach debugfs and mtools cannot run extra commands or open another file
(issue 11, item 4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from builder.disk.debugfs import quote
from builder.util.errors import UserError
from tests.conftest import fleet_yaml, pifleet
from tests.image_read import root_read
from tests.layouts import elf_for


def k3s_named(fleet_dir: Path, name: str) -> Path:
    binary = fleet_dir / name
    shutil.copy(elf_for("arm64"), binary)
    (fleet_dir / "fleet.yaml").write_text(
        fleet_yaml(k3s="k3s: {binary: " + json.dumps(str(binary)) + "}")
    )
    return binary


def test_quote_in_a_file_name_is_written_not_run(fleet_dir: Path, tmp_path: Path) -> None:
    binary = k3s_named(fleet_dir, 'k3s" "x')
    proc = pifleet("build", "fleet.yaml", cwd=fleet_dir)
    assert proc.returncode == 0, proc.stderr
    image = fleet_dir / "out/edge-fleet.img"
    assert root_read(image, "/usr/local/bin/k3s", tmp_path) == binary.read_bytes()
    assert root_read(image, "/etc/hostname", tmp_path) == b"raspberrypi\n"


def test_newline_in_a_file_name_is_refused(fleet_dir: Path) -> None:
    k3s_named(fleet_dir, "k3s\nmkdir injected\nx")
    proc = pifleet("build", "fleet.yaml", cwd=fleet_dir)
    assert proc.returncode == 2, proc.stderr
    (error,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("pifleet: error")]
    # Refused when the config is read (a control character), and by debugfs.quote otherwise.
    assert "k3s.binary: control or invisible character U+000A" in error or "line break" in error
    assert not (fleet_dir / "out/edge-fleet.img").exists()


def test_quote_doubles_quotes_and_refuses_breaks() -> None:
    assert quote('/a"b') == '"/a""b"'
    for bad in ("/a\nb", "/a\rb", "/a\0b"):
        with pytest.raises(UserError):
            quote(bad)


@pytest.mark.parametrize("mark", ["@@", "?"])
@pytest.mark.parametrize("where", ["base", "output"])
def test_tool_confusing_paths_are_refused_before_writing(
    fleet_dir: Path, tmp_path: Path, mark: str, where: str
) -> None:
    folder = tmp_path / f"a{mark}1"
    folder.mkdir()
    if where == "base":
        shutil.copy(fleet_dir / "base.img", folder / "base.img")
        text = fleet_yaml(base=f"base: {{path: '{folder}/base.img'}}")
    else:
        text = fleet_yaml(output=f"output: {{dir: '{folder}/out'}}")
    (fleet_dir / "fleet.yaml").write_text(text)
    proc = pifleet("build", "fleet.yaml", cwd=fleet_dir)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith("warning: ")]
    assert f"containing {mark!r}" in proc.stderr and len(errors) == 1
    assert not list(folder.rglob("*.img*")) or where == "base"
    assert not (folder / "out").exists() or not list((folder / "out").iterdir())
