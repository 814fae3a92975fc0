"""QEMU boots of what real K3s and etcd refuse at first boot (issue 24, items 3, 4 and 7),
each a single guest on QEMU's user network, where the host is 10.0.2.2.

- Item 7: a card whose root holds an empty /etc/rancher/node/password (what a power cut
  after K3s wrote it leaves; K3s sends it as it is, and the server answers 400 "node
  password not set" forever) joins, and the device keeps a password the server knows.
- Items 3 and 4 boot the servers of a cluster pifleet created (`cluster init`, then `build
  --per-device`), whose cluster.server is a K3s test server on the host serving that
  cluster's own CA (its token is the cluster's): the rest of the cluster, already running.
  - Item 4: the first server, re-flashed without `cluster.initialized`, finds its CA served
    there and refuses cluster-init in one line; no etcd member is made on its disk.
  - Item 3: the second server, re-flashed while etcd still has its member, gets etcd's
    "duplicate node name" refusal and the verdict naming `pifleet node retire`; once that
    has run against the cluster, the same boot rejoins by itself (as the verdict says).

Marked `faults` (left out of the default run); bench/faults.py runs them.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from builder.detect.flavor import detect
from builder.disk import sparse
from builder.disk.image import Image
from builder.qemu import overlay
from builder.qemu.console import BootResult, Stage
from builder.qemu.power import Guest, Hooks, boot_kernel, power_on
from builder.qemu.vm import VM, require_qemu
from builder.testserver.server import K3sTestServer, free_port
from tests.boot_helpers import DEVICE, STANDIN, base_image, guest_disk
from tests.conftest import pifleet
from tests.image_read import ext4_read, root_spec
from tests.power_cycles import BOOT_TIMEOUT, Device

pytestmark = [pytest.mark.slow, pytest.mark.faults]

FIRST, SECOND = "edge-srv-1", "edge-srv-2"
PASSWORD = "/etc/rancher/node/password"
DB = "/var/lib/rancher/k3s/server/db"
VERDICT = Stage("a verdict", lambda r: bool(r.verdicts))


def debugfs(target: str, command: str, write: bool = False) -> str:
    flags = ["-w"] if write else []
    done = subprocess.run(["debugfs", *flags, "-R", command, target],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout + done.stderr


def mode_of(root: Path, path: str) -> int:
    found = re.search(r"Mode:\s+(\d+)", debugfs(str(root), f"stat {path}"))  # the permissions
    assert found, f"{path} is not on the guest's disk"
    return int(found.group(1), 8)


# -- item 7 ---------------------------------------------------------------------------------


@pytest.fixture
def emptied_password(arm64_device: tuple[Path, Path], tmp_path: Path) -> Iterator[Device]:
    """A copy of the session's image as a power cut after K3s made its password leaves a card
    flashed from the golden image: no password pre-seeded on the boot partition (K3s makes
    its own), an empty /etc/rancher/node/password (0600, as K3s creates it) in the root; and
    a server with the image's CA and token but no node yet."""
    image, state = arm64_device
    copy = tmp_path / "emptied.img"
    sparse.copy_file(image, copy)
    opened = Image.open(copy)
    opened.boot.stage_delete("/pifleet/node-password")
    opened.boot.flush()
    spec = root_spec(copy)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    for command in ("mkdir /etc/rancher", "mkdir /etc/rancher/node", f"write {empty} {PASSWORD}",
                    f"sif {PASSWORD} mode 0100600"):  # fmt: skip
        debugfs(spec, command, write=True)
    assert "Size: 0" in debugfs(spec, f"stat {PASSWORD}")
    fresh = tmp_path / "k3s-test-server"
    shutil.copytree(state, fresh)
    (fresh / "registry.json").unlink(missing_ok=True)
    with K3sTestServer(state_dir=fresh) as server:
        yield Device(copy, tmp_path, server)


def test_an_empty_node_password_file_is_replaced_before_k3s_starts(
    emptied_password: Device, tmp_path: Path
) -> None:
    device = emptied_password
    boot = device.until_joined()
    assert boot.node == DEVICE, (boot.failure, boot.tail(40))
    assert boot.verdicts == [], f"the agent gave a verdict: {boot.verdicts}"
    replaced = f"{PASSWORD} was empty or damaged"
    assert any(replaced in line for line in boot.console), "the agent never replaced the file"
    _disk, root = guest_disk(device.disk, tmp_path)
    password = ext4_read(root, PASSWORD)
    assert re.fullmatch(rb"[0-9a-f]{32}\n", password), "not 32 hex characters and a newline"
    assert mode_of(root, PASSWORD) == 0o600
    # The server knows exactly the password the device holds: never an empty one (400).
    known = device.server.node_password_hash(DEVICE)
    assert known == hashlib.sha256(password.strip()).hexdigest(), "the server saw another password"
    assert password.strip().decode() not in "\n".join(boot.console)


# -- items 3 and 4: a created cluster's servers ---------------------------------------------


def fleet_yaml(port: int) -> str:
    return f"""\
name: reflash-fleet
arch: arm64
base: {{path: {base_image("arm64")}}}
k3s: {{binary: {STANDIN}, test_standin: true}}
cluster:
  create: true
  server: https://10.0.2.2:{port}
  servers: [{FIRST}, {SECOND}]
  agent_token: true
users:
  - name: ops
    sudo: true
    ssh_authorized_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@laptop']
devices:
  - {{hostname: {FIRST}}}
  - {{hostname: {SECOND}}}
output: {{dir: out, formats: [img], bmap: false}}
agent: {{recheck_interval: 15, backoff_cap: 5, clock_sync_timeout: 20}}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """(the fleet's folder, the host port its cluster.server names): cluster init, then the
    two servers' images."""
    work = tmp_path_factory.mktemp("reflash")
    port = free_port()
    (work / "fleet.yaml").write_text(fleet_yaml(port))
    for args in (("cluster", "init", "fleet.yaml"), ("build", "fleet.yaml", "--per-device")):
        done = pifleet(*args, cwd=work)
        assert done.returncode == 0, done.stderr
    return work, port


@pytest.fixture
def running_cluster(cluster: tuple[Path, int], tmp_path: Path) -> Iterator[K3sTestServer]:
    """The cluster's other servers as the re-flashed one finds them: a K3s test server with
    managed etcd on cluster.server's port, serving the created cluster's CA, its server token
    accepted."""
    work, port = cluster
    state = tmp_path / "cluster-server"
    state.mkdir()
    tls = work / "cluster" / "tls"
    for ours, theirs in (("root-ca", "root-ca"), ("intermediate-ca", "intermediate-ca"),
                         ("bundle-server-ca", "server-ca")):  # fmt: skip
        shutil.copy(tls / f"{theirs}.pem", state / f"{ours}.crt")
        shutil.copy(tls / f"{theirs}.key", state / f"{ours}.key")
    token = (work / "cluster" / "token").read_text().strip()
    with K3sTestServer(port=port, state_dir=state, ca_kind="bundle", etcd=True) as server:
        assert token.startswith(f"K10{server.ca_hash}::server:"), "not the cluster's CA"
        server.set_password(token.rsplit(":", 1)[1])
        yield server


def reflashed(image: Path, work: Path) -> Guest:
    """`image` as a freshly flashed card: an overlay over it, nothing redirected (the device
    file, token and CA are the build's)."""
    work.mkdir()
    opened = Image.open(image)
    flavor = detect(opened)
    boot = boot_kernel(opened, work, flavor.arch)
    disk = work / "disk.qcow2"
    overlay.create(image, disk)
    return Guest(image, require_qemu(flavor.arch), disk, boot.kernel, boot.initrd,
                 flavor.cloud_init, work, boot.modules)  # fmt: skip


def boot(
    guest: Guest, until: Stage, during: Callable[[VM, BootResult, str], None] | None = None
) -> BootResult:
    hooks = Hooks(tolerate_failures=True, during=during)
    return power_on(guest, until, timeout=BOOT_TIMEOUT, hooks=hooks)


def test_a_reflashed_first_server_refuses_cluster_init(
    cluster: tuple[Path, int], running_cluster: K3sTestServer, tmp_path: Path
) -> None:
    work, port = cluster
    guest = reflashed(work / "out" / f"{FIRST}.img", tmp_path / "guest")
    result = boot(guest, VERDICT | Stage.JOINED)
    assert not result.joined, "the re-flashed first server started a second cluster"
    assert result.verdicts, (result.failure, result.tail(40))
    hash16 = running_cluster.ca_hash[:16]
    assert (
        f"failed state=verify reason=refusing cluster-init: https://10.0.2.2:{port} already "
        f"serves this cluster's CA (sha256 {hash16}...)" in result.verdicts[0]
    ), result.verdicts
    assert "set cluster.initialized: true" in result.verdicts[0]
    console = "\n".join(result.console)
    assert "etcd member" not in console and "Traceback" not in console
    # The probe only asked for /cacerts, without credentials.
    assert {(r.method, r.path, r.had_credentials) for r in running_cluster.requests} == {
        ("GET", "/cacerts", False)
    }
    _disk, root = guest_disk(guest.disk, tmp_path)
    assert "File not found" in debugfs(str(root), f"stat {DB}"), "an etcd db was created"
    state = json.loads(ext4_read(root, "/var/lib/pifleet/state.json"))
    assert state["failed_state"] == "verify", state


def test_a_reflashed_server_is_refused_by_etcd_until_retired_then_rejoins(
    cluster: tuple[Path, int], running_cluster: K3sTestServer, tmp_path: Path
) -> None:
    work, _port = cluster
    server = running_cluster
    old = server.add_etcd_member(SECOND)  # its member and Node from before the re-flash
    retired: list[subprocess.CompletedProcess[str]] = []
    retiring: list[threading.Thread] = []

    def retire() -> None:
        kubeconfig = str(server.kubeconfig)
        retired.append(pifleet("node", "retire", SECOND, "--kubeconfig", kubeconfig, "--yes",
                               cwd=tmp_path))  # fmt: skip

    def during(_vm: VM, result: BootResult, _line: str) -> None:
        """At the verdict, the operator runs what it says (the guest runs on meanwhile)."""
        if result.verdicts and not retiring:
            retiring.append(threading.Thread(target=retire))
            retiring[0].start()

    guest = reflashed(work / "out" / f"{SECOND}.img", tmp_path / "guest")
    result = boot(guest, Stage.JOINED, during)
    for thread in retiring:
        thread.join()
    assert result.verdicts, ("etcd never refused the re-flashed server", result.tail(40))
    verdict = result.verdicts[0]
    assert "failed state=start reason=etcd refuses this server" in verdict, verdict
    assert f"pifleet node retire {SECOND} --kubeconfig F" in verdict, verdict
    assert retired and retired[0].returncode == 0, retired and retired[0].stderr
    assert result.joined and result.node == SECOND, (result.failure, result.tail(40))
    assert len(result.verdicts) == 1, result.verdicts  # joined at the next recheck, no reboot
    (new,) = server.etcd_members()
    assert new != old and new.startswith(f"{SECOND}-")
    assert SECOND in server.registered_nodes()
    assert "Traceback" not in "\n".join(result.console)
    _disk, root = guest_disk(guest.disk, tmp_path)
    state = json.loads(ext4_read(root, "/var/lib/pifleet/state.json"))
    assert state["state"] == "done" and state["ca_hash"] == server.ca_hash
    assert ext4_read(root, f"{DB}/etcd/name").decode() == new
