"""`pifleet lint`: a clean build passes; each kind of damage, made with mtools and debugfs on a
built image, is one line and exit 1; a build whose result fails lint is refused. user-data is
judged by the cloud-init the image ships, not the host's (builder/lint.py, user_data_problems)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.builds import build_ok
from tests.conftest import fleet_yaml, pifleet
from tests.image_read import MTOOLS_ENV, partitions, root_spec
from tests.layouts import LAYOUTS, elf_for, make_pi_image

# The host's own cloud-init schema (tools/setup.sh installs cloud-init): a real one to ship in a
# test image. The synthetic images say they carry cloud-init 25.2 but ship no schema.
HOST_SCHEMA = Path(
    "/usr/lib/python3/dist-packages/cloudinit/config/schemas/schema-cloud-config-v1.json"
)
needs_host_schema = pytest.mark.skipif(
    not HOST_SCHEMA.exists() or shutil.which("cloud-init") is None,
    reason="needs cloud-init on the host (tools/setup.sh installs it)",
)


def ship_schema(image: Path, schema: bytes, tmp: Path) -> None:
    """Put `schema` where the image's cloud-init keeps its schema (debugfs, no mount)."""
    src = tmp / "schema.json"
    src.write_bytes(schema)
    folder, script = "", []
    for part in HOST_SCHEMA.parent.parts[1:]:
        folder += f"/{part}"
        script.append(f"mkdir {folder}")  # an existing folder only prints an error
    script += [f"rm {HOST_SCHEMA}", f"write {src} {HOST_SCHEMA}"]
    (tmp / "ship.cmd").write_text("\n".join(script) + "\n")
    subprocess.run(
        ["debugfs", "-w", "-f", str(tmp / "ship.cmd"), root_spec(image)],
        check=True, capture_output=True,
    )  # fmt: skip


def fat_write(image: Path, name: str, data: bytes, tmp: Path) -> None:
    src = tmp / name
    src.write_bytes(data)
    boot = partitions(image)[0]["start"] * 512
    subprocess.run(
        ["mcopy", "-o", "-i", f"{image}@@{boot}", str(src), f"::/{name}"],
        check=True,
        env=MTOOLS_ENV,
    )


@needs_host_schema
def test_clean_build_passes_and_damage_is_reported(fleet_dir: Path, tmp_path: Path) -> None:
    build_ok(fleet_dir)
    image = fleet_dir / "out" / "edge-fleet.img"
    ship_schema(image, HOST_SCHEMA.read_bytes(), tmp_path)
    clean = pifleet("lint", str(image), cwd=fleet_dir)
    assert clean.returncode == 0 and clean.stdout == "", clean.stdout + clean.stderr

    work = tmp_path / "damage"
    work.mkdir()
    fat_write(
        image, "cmdline.txt", b"console=tty1 root=PARTUUID=deadbeef-02 rootwait\nquiet\n", work
    )
    fat_write(image, "config.txt", b"[all]\narm_64bit=1\ndtoverlay vc4\n", work)
    fat_write(image, "user-data", b"#cloud-config\nkeyboard: {layout: 5}\n", work)
    fat_write(image, "network-config", b"version: 1\n", work)
    fat_write(
        image,
        "rpi-preseed.toml",
        b'config_version = "1.1"\n[wlan]\nssid = "x"\npassword = "no"\n',
        work,
    )
    fat_write(image, "firstrun.sh", b"#!/bin/sh\nif true; then\n", work)
    subprocess.run(
        ["debugfs", "-w", "-R", f"write {elf_for('armhf')} /usr/local/bin/k3s.new", root_spec(image)],
        check=True, capture_output=True,
    )  # fmt: skip
    for cmd in ("unlink /usr/local/bin/k3s", "link /usr/local/bin/k3s.new /usr/local/bin/k3s"):
        subprocess.run(
            ["debugfs", "-w", "-R", cmd, root_spec(image)], check=True, capture_output=True
        )

    proc = pifleet("lint", str(image), cwd=fleet_dir)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    expected = [
        "cmdline.txt: 2 lines",
        "cmdline.txt: no cgroup_enable=memory",
        "cmdline.txt: root=PARTUUID=deadbeef-02 is not this image's root partition",
        "config.txt:3: not a [filter] or key=value line: 'dtoverlay vc4'",
        "user-data: ",
        "network-config: expected network: {version: 2, ...}",
        "rpi-preseed.toml: wlan.password: ",
        "firstrun.sh: ",
        "/usr/local/bin/k3s: binary is armhf but the image is arm64",
    ]
    for text in expected:
        assert any(f"{image}: {text}" in line for line in lines), (text, lines)
    assert len(lines) == len(expected), lines


def test_build_refuses_an_image_that_fails_lint(fleet_dir: Path) -> None:
    """A config.txt line lint refuses, passed through from the base by the config.txt step:
    lint finds it in the built image, and the build fails with one error line, writing
    nothing."""
    image = fleet_dir / "base.img"
    work = fleet_dir / "w"
    work.mkdir()
    fat_write(image, "config.txt", b"[all]\narm_64bit=1\ndtoverlay vc4\n", work)
    proc = pifleet("build", "fleet.yaml", cwd=fleet_dir)
    assert proc.returncode == 1
    assert "config.txt:3: not a [filter] or key=value line" in proc.stderr
    assert proc.stderr.count("error") == 1, proc.stderr
    assert not (fleet_dir / "out" / "edge-fleet.img").exists()


@pytest.mark.parametrize("gpt", [False, True], ids=["mbr", "gpt"])
def test_a_base_whose_root_is_another_partition_is_bad_input(tmp_path: Path, gpt: bool) -> None:
    """cmdline.txt's root= names a partition the base does not have (a base converted to GPT
    keeps its MBR PARTUUID): exit 2 before the base is copied, one line naming the base and
    the partition root= should name. Before, lint found it in the copy: exit 1."""
    make_pi_image(tmp_path / "base.img", LAYOUTS["trixie"], "arm64", gpt=gpt)
    (tmp_path / "token").write_text("K10" + "7e" * 32 + "::server:s3cr3t\n")
    (tmp_path / "token").chmod(0o600)
    (tmp_path / "fleet.yaml").write_text(fleet_yaml())
    if not gpt:
        fat_write(tmp_path / "base.img", "cmdline.txt", b"root=/dev/mmcblk0p3 rootwait\n", tmp_path)
    proc = pifleet("build", "fleet.yaml", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    # The server token on agents is a warning line (issue 24, item 9): the error stands alone.
    lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("pifleet: error: "), proc.stderr
    root = partitions(tmp_path / "base.img")[1]
    assert "base.img: cmdline.txt: root=" in lines[0] and " is not this image's root" in lines[0]
    assert f"(partition 2, PARTUUID={root['uuid'].lower() if gpt else '5e3da1f0-02'})" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_gpt_base_whose_cmdline_names_its_root_builds(tmp_path: Path) -> None:
    """GPT itself is supported (Pi 5 NVMe images): with root=PARTUUID=<its GPT partition>
    the same base builds and passes lint."""
    base = make_pi_image(tmp_path / "base.img", LAYOUTS["trixie"], "arm64", gpt=True)
    uuid = partitions(base)[1]["uuid"].lower()
    line = f"console=serial0,115200 root=PARTUUID={uuid} rootfstype=ext4 rootwait\n"
    fat_write(base, "cmdline.txt", line.encode(), tmp_path)
    (tmp_path / "token").write_text("K10" + "7e" * 32 + "::server:s3cr3t\n")
    (tmp_path / "token").chmod(0o600)
    (tmp_path / "fleet.yaml").write_text(fleet_yaml())
    build_ok(tmp_path)
    assert pifleet("lint", "out/edge-fleet.img", cwd=tmp_path).returncode == 0


def device_image(fleet_dir: Path) -> Path:
    """A device image as `build --per-device` writes it: its user-data holds a host key."""
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(devices="devices: [{hostname: pi-001}]"))
    build_ok(fleet_dir, "--per-device")
    return fleet_dir / "out" / "pi-001.img"


@needs_host_schema
def test_a_device_image_passes_lint_against_a_real_cloud_init_schema(
    fleet_dir: Path, tmp_path: Path
) -> None:
    """The audit's case: on a host with cloud-init 22.4, lint failed the device image pifleet
    had just built ("ssh_genkeytypes: [] is too short"). Every cloud-init schema refuses
    `ssh_genkeytypes: []` (minItems: 1, 22.4 to 25.3), and cc_ssh ignores it when ssh_keys is
    given, so the seed no longer writes it."""
    image = device_image(fleet_dir)
    ship_schema(image, HOST_SCHEMA.read_bytes(), tmp_path)
    proc = pifleet("lint", str(image), cwd=fleet_dir)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr
    seed = subprocess.run(
        ["mtype", "-i", f"{image}@@{partitions(image)[0]['start'] * 512}", "::/user-data"],
        capture_output=True, env=MTOOLS_ENV, check=True,
    ).stdout  # fmt: skip
    assert b"ssh_keys:" in seed and b"ssh_genkeytypes" not in seed


@needs_host_schema
def test_user_data_is_judged_by_the_images_schema_not_the_hosts(
    fleet_dir: Path, tmp_path: Path
) -> None:
    """The image ships a cloud-init whose schema differs from the host's: here keyboard.layout
    may be a number, and unknown top-level keys are refused (as from cloud-init 23.4). lint
    reports what the image's cloud-init would, and nothing the host's alone would."""
    build_ok(fleet_dir)
    image = fleet_dir / "out" / "edge-fleet.img"
    schema = json.loads(HOST_SCHEMA.read_bytes())
    layout = schema["$defs"]["cc_keyboard"]["properties"]["keyboard"]["properties"]["layout"]
    layout["type"] = ["string", "integer"]
    schema["properties"] = {"keyboard": {}}  # 23.4 and later list every key so, at the top
    schema["additionalProperties"] = False
    ship_schema(image, json.dumps(schema).encode(), tmp_path)
    user_data = b"#cloud-config\nkeyboard: {layout: 5}\nno_such_module: 1\n"
    fat_write(image, "user-data", user_data, tmp_path)
    host = tmp_path / "user-data"  # what the host's cloud-init says about the same file
    assert subprocess.run(["cloud-init", "schema", "--config-file", str(host)]).returncode == 1
    proc = pifleet("lint", str(image), cwd=fleet_dir)
    assert proc.stdout.splitlines() == [
        f"{image}: user-data: no_such_module: Additional properties are not allowed "
        "('no_such_module' was unexpected) (cloud-init 25.2's schema)"
    ], proc.stdout + proc.stderr
    assert proc.returncode == 1


def test_without_the_images_schema_only_the_same_release_judges(
    fleet_dir: Path, tmp_path: Path
) -> None:
    """The synthetic image says cloud-init 25.2 (dpkg) but ships no schema: the host's
    `cloud-init schema` judges only if it is 25.2 too; any other release would apply its own
    rules to a seed it will never read, so lint says on stderr that it did not check."""
    build_ok(fleet_dir)
    image = fleet_dir / "out" / "edge-fleet.img"
    fat_write(image, "user-data", b"#cloud-config\nkeyboard: {layout: 5}\n", tmp_path)
    proc = pifleet("lint", str(image), cwd=fleet_dir)
    version = ""
    if shutil.which("cloud-init"):
        version = subprocess.run(["cloud-init", "--version"], capture_output=True, text=True)
        version = (version.stdout + version.stderr).split()[-1]
    if version.startswith("25.2"):
        assert proc.returncode == 1 and "user-data: " in proc.stdout, proc.stdout
    else:
        assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr
        assert "user-data: not checked: the image ships cloud-init 25.2 without its schema" in (
            proc.stderr
        )
