"""pifleet as a user installs it: a wheel in a fresh venv, with no checkout in sight.

The checkout's files (tracked and new, not ignored; symlinks kept as symlinks) are copied
to a temporary directory; `python -m build` makes an sdist there and a wheel from that
sdist, as a release does. The wheel is installed with pip into a new venv, and the
installed `pifleet` runs from a directory outside the checkout, without PYTHONPATH.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, TEST_TOKEN, fleet_yaml

# About 75 s on 2 busy cores, most of it pip installing the dependencies into the new venv.
pytestmark = pytest.mark.slow

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
CATALOG = sorted(p.name for p in (REPO / "images").glob("*.yaml"))
# Run-time files and the checkout file each must carry the contents of.
BUNDLED = {
    "builder/data/schema.json": "config/schema.json",
    "builder/data/example.yaml": "config/example.yaml",
    "builder/data/k3s-standin": "tests/fixtures/k3s-standin",
    **{f"builder/data/images/{name}": f"images/{name}" for name in CATALOG},
    **{
        f"builder/templates/{p.name}": f"builder/templates/{p.name}"
        for p in (REPO / "builder/templates").iterdir()
    },
    **{f"firstboot/{p.name}": f"firstboot/{p.name}" for p in (REPO / "firstboot").glob("*.py")},
}


@dataclass(frozen=True)
class Dists:
    sdist: Path
    wheel: Path


@dataclass(frozen=True)
class Installed:
    venv: Path
    work: Path  # an empty directory outside the checkout, the cwd of every run

    def run(self, *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["PIFLEET_TOKEN"] = TEST_TOKEN
        return subprocess.run(
            argv, cwd=cwd or self.work, env=env, capture_output=True, text=True, timeout=600
        )

    def pifleet(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        proc = self.run(str(self.venv / "bin/pifleet"), *args, cwd=cwd)
        assert proc.returncode == 0, proc.stderr
        return proc


def _copy_checkout(dest: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src, dst = REPO / rel, dest / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the work tree, not yet in the index
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    root = tmp_path_factory.mktemp("dist")
    _copy_checkout(root / "src")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(root / "dist"), str(root / "src")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (sdist,) = (root / "dist").glob("*.tar.gz")
    (wheel,) = (root / "dist").glob("*.whl")
    return Dists(sdist, wheel)


@pytest.fixture(scope="module")
def installed(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel-venv")
    venv.create(root / "venv", with_pip=True)
    work = root / "work"
    work.mkdir()
    env = Installed(root / "venv", work)
    proc = env.run(
        str(root / "venv/bin/python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--no-compile",
        str(dists.wheel),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return env


def test_sdist_carries_the_files_not_the_links(dists: Dists) -> None:
    top = f"pifleet-{VERSION}"
    with tarfile.open(dists.sdist) as tar:
        for inside, source in BUNDLED.items():
            member = tar.getmember(f"{top}/{inside}")
            assert member.isfile(), f"{inside} is not a regular file in the sdist"
            data = tar.extractfile(member)
            assert data is not None and data.read() == (REPO / source).read_bytes(), inside


def test_wheel_carries_every_run_time_file(dists: Dists) -> None:
    with zipfile.ZipFile(dists.wheel) as whl:
        for inside, source in BUNDLED.items():
            assert whl.read(inside) == (REPO / source).read_bytes(), inside


def test_installed_package_is_the_wheel_not_the_checkout(installed: Installed) -> None:
    code = "import json, sys, builder, firstboot; print(json.dumps([builder.__file__, firstboot.__file__, sys.path]))"
    proc = installed.run(str(installed.venv / "bin/python"), "-c", code)
    assert proc.returncode == 0, proc.stderr
    builder_file, firstboot_file, path = json.loads(proc.stdout)
    assert Path(builder_file).is_relative_to(installed.venv)
    assert Path(firstboot_file).is_relative_to(installed.venv)
    assert not [p for p in path if p and Path(p).resolve().is_relative_to(REPO)]


def test_version_images_and_test_server(installed: Installed) -> None:
    assert installed.pifleet("--version").stdout == f"pifleet {VERSION}\n"
    listed = installed.pifleet("images").stdout
    assert all(name.removesuffix(".yaml") in listed for name in CATALOG)
    assert "--port" in installed.pifleet("test-server", "--help").stdout


def test_build_inspect_personalize(installed: Installed, make_image: Callable[..., Path]) -> None:
    base = make_image("base.img")
    d = base.parent
    token = d / "token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, TEST_TOKEN.encode() + b"\n")
    os.close(fd)
    (d / "fleet.yaml").write_text(fleet_yaml(devices="devices: [{hostname: pi-001}]"))
    installed.pifleet("build", "fleet.yaml", cwd=d)
    manifest = json.loads((d / "out/manifest.json").read_text())
    assert manifest["pifleet_version"] == VERSION
    facts = json.loads(installed.pifleet("inspect", "--json", "out/edge-fleet.img", cwd=d).stdout)
    for key in ("os", "k3s", "agent", "seed", "cmdline"):
        assert facts[key] == manifest[key], key
    installed.pifleet(
        "personalize", "out/edge-fleet.img", "--config", "fleet.yaml", "--device", "pi-001", cwd=d
    )
    assert (d / "out/pi-001.img").stat().st_mode & 0o777 == 0o600


def test_demo_builds_the_bundled_example_with_the_bundled_standin(
    installed: Installed, make_image: Callable[..., Path]
) -> None:
    """`pifleet demo`'s build step, on a generated base instead of `pifleet base`'s (root, minutes)."""
    base = make_image("base.img")
    code = (
        "import sys; from pathlib import Path; from builder import build, demo, plan\n"
        "config, k3s, out = demo.inputs(None, None)\n"
        "print(k3s); print(out)\n"
        "build.build(plan.resolve(config, base_override=Path(sys.argv[1]), k3s_override=k3s, output_dir=out))\n"
    )
    proc = installed.run(str(installed.venv / "bin/python"), "-c", code, str(base))
    assert proc.returncode == 0, proc.stderr[-3000:]
    k3s, out = map(Path, proc.stdout.splitlines()[:2])
    assert k3s.is_relative_to(installed.venv)
    assert k3s.read_bytes() == (REPO / "tests/fixtures/k3s-standin").read_bytes()
    assert out == installed.work / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["k3s_test_standin"] and manifest["fleet"] == "edge-fleet"
    assert manifest["inputs"][1]["sha256"] == hashlib.sha256(k3s.read_bytes()).hexdigest()
