"""Two guests, one cluster: a server image and an agent image of a fleet pifleet created
(`cluster init`, then `build --per-device`) boot under QEMU on one socket network.

The server guest initialises from the CA files in its image (the K3s stand-in as `k3s
server` serves /cacerts, the supervisor routes and the Node API from them); the agent
guest joins it, pinned from its first boot to the hash `cluster init` printed. Checked on
both serial consoles and on both disks after a clean power-off. Marked `cluster` (left out
of the default run); bench/cluster_boot.py runs it and prints its timings.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from builder.disk.image import Image
from builder.qemu import overlay
from builder.qemu.power import boot_kernel
from builder.qemu.vm import VM, kernel_command_line, require_qemu
from tests.boot_helpers import STANDIN, base_image, guest_disk
from tests.conftest import pifleet
from tests.image_read import ext4_read

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

SERVER, AGENT = "edge-srv-1", "edge-agent-1"
ADDRESSES = {SERVER: "10.77.0.1", AGENT: "10.77.0.2"}
TIMEOUT = 1500.0
JOINED = re.compile(r"pifleet-firstboot: joined node=(\S+)")
FAILED = re.compile(r"pifleet-firstboot: failed state=(\w+)")


def fleet_yaml(base: Path) -> str:
    devices = "".join(
        f"  - {{hostname: {name}, address: {ip}/24, gateway: 10.77.0.254}}\n"
        for name, ip in ADDRESSES.items()
    )
    return f"""\
name: cluster-fleet
arch: arm64
base: {{path: {base}}}
k3s: {{binary: {STANDIN}, test_standin: true}}
cluster:
  create: true
  server: https://{ADDRESSES[SERVER]}:6443
  servers: [{SERVER}]
  agent_token: true
users:
  - name: ops
    sudo: true
    ssh_authorized_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@laptop']
devices:
{devices}output: {{dir: out, formats: [img], bmap: false}}
agent: {{recheck_interval: 15}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def guest(stack: contextlib.ExitStack, image: Path, work: Path, net: str, mac: str) -> VM:
    work.mkdir(parents=True)
    opened = Image.open(image)
    boot = boot_kernel(opened, work, "arm64")
    machine = require_qemu("arm64")
    cmdline = (opened.boot.read("/cmdline.txt") or b"").decode()
    disk = work / "disk.qcow2"
    overlay.create(image, disk)
    network = ("-netdev", f"socket,id=net0,{net}", "-device", f"virtio-net-pci,netdev=net0,mac={mac},romfile=")  # fmt: skip
    vm = VM(machine, disk, boot.kernel, boot.initrd, kernel_command_line(cmdline, machine),
            work / "console.log", smp=1, network=network, modules=boot.modules)  # fmt: skip
    return stack.enter_context(vm)


def follow(vms: dict[str, VM], timeout: float) -> tuple[dict[str, list[str]], dict[str, float]]:
    """Both consoles until both guests joined, one failed, or `timeout`; (lines, joined at)."""
    consoles: dict[str, list[str]] = {name: [] for name in vms}
    joined: dict[str, float] = {}
    started = time.monotonic()
    while time.monotonic() - started < timeout and len(joined) < len(vms):
        for name, vm in vms.items():
            for line in vm.lines(0.5):
                consoles[name].append(line.text)
                if JOINED.search(line.text) and name not in joined:
                    joined[name] = line.seconds
                if FAILED.search(line.text):
                    return consoles, joined
        if not all(vm.running for vm in vms.values()):
            break
    return consoles, joined


def test_server_guest_initialises_and_agent_guest_joins_it_pinned(
    tmp_path: Path, record_testsuite_property: Callable[[str, object], None]
) -> None:
    (tmp_path / "fleet.yaml").write_text(fleet_yaml(base_image("arm64")))
    made = pifleet("cluster", "init", "fleet.yaml", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    printed = made.stdout.split("K10 CA hash: ")[1].split()[0]
    started = time.monotonic()
    built = pifleet("build", "fleet.yaml", "--per-device", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    record_testsuite_property("build_seconds", round(time.monotonic() - started, 1))
    port = free_port()
    with contextlib.ExitStack() as stack:
        vms = {
            SERVER: guest(stack, tmp_path / "out" / f"{SERVER}.img", tmp_path / "srv",
                          f"listen=127.0.0.1:{port}", "52:54:00:77:00:01"),
        }  # fmt: skip
        time.sleep(2)  # the listening side first
        vms[AGENT] = guest(stack, tmp_path / "out" / f"{AGENT}.img", tmp_path / "agent",
                           f"connect=127.0.0.1:{port}", "52:54:00:77:00:02")  # fmt: skip
        consoles, joined = follow(vms, TIMEOUT)
        for vm in vms.values():
            vm.power_off()
    server_console, agent_console = "\n".join(consoles[SERVER]), "\n".join(consoles[AGENT])
    for name, seconds in joined.items():
        record_testsuite_property(f"{name}_joined_seconds", round(seconds, 1))
    assert set(joined) == {SERVER, AGENT}, (server_console[-3000:], agent_console[-3000:])
    assert f"pifleet-firstboot: joined node={SERVER}" in server_console
    assert f"k3s-standin: registered node {AGENT}" in server_console
    assert "Traceback" not in server_console + agent_console
    # The agent pinned the CA by the hash `cluster init` printed, from its first boot.
    assert f"server CA pinned (sha256 {printed[:16]}...)" in agent_console
    _disk, agent_root = guest_disk(tmp_path / "agent" / "disk.qcow2", tmp_path / "agent")
    state = json.loads(ext4_read(agent_root, "/var/lib/pifleet/state.json"))
    assert (state["state"], state["ca_hash"]) == ("done", printed)
    token = ext4_read(agent_root, "/etc/rancher/k3s/join-token").decode().strip()
    assert token.startswith(f"K10{printed}::node:")
    # The server's own records: the agent registered once; its etcd member from cluster-init.
    _disk, server_root = guest_disk(tmp_path / "srv" / "disk.qcow2", tmp_path / "srv")
    registry = json.loads(
        ext4_read(server_root, "/var/lib/rancher/k3s/server/standin-registry.json")
    )
    assert sorted(registry["nodes"]) == [AGENT, SERVER]  # the server's own kubelet too
    member = json.loads(
        ext4_read(server_root, "/var/lib/rancher/k3s/server/db/etcd/standin-member.json")
    )
    assert member == {"name": SERVER, "how": "cluster-init"}
    config = ext4_read(server_root, "/etc/rancher/k3s/config.yaml").decode()
    assert "cluster-init: true" in config and f'"{ADDRESSES[SERVER]}"' in config
    server_state = json.loads(ext4_read(server_root, "/var/lib/pifleet/state.json"))
    assert (server_state["state"], server_state["ca_hash"]) == ("done", printed)
    secrets = [(tmp_path / "cluster" / n).read_text().strip().rsplit(":", 1)[1]
               for n in ("token", "agent-token")]  # fmt: skip
    for secret in secrets:
        assert secret not in server_console + agent_console + built.stdout + built.stderr
