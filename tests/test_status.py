"""`pifleet status`: the fleet's devices against the cluster's Nodes, read through the
Kubernetes API that the K3s test server emulates, and cross-checked with the real kubectl."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.config.fleet import load
from builder.config.labels import IMAGE, fleet_labels, image_label
from builder.testserver.kubeapi import NodeStore
from builder.testserver.server import K3sTestServer
from tests.conftest import fleet_yaml, pifleet

DEVICES = "devices:\n  - hostname: edge-001\n  - hostname: edge-002\n  - hostname: edge-003\n"


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    (tmp_path / "fleet.yaml").write_text(fleet_yaml(devices=DEVICES))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "SHA256SUMS").write_text(f"{GOLDEN}  edge-fleet.img\n")
    return tmp_path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[K3sTestServer]:
    with K3sTestServer(state_dir=tmp_path / "k3s") as s:
        s.kube.store.grace = 4.0  # the node monitor grace period, short for the test
        yield s


@contextlib.contextmanager
def kubelets(store: NodeStore, *names: str) -> Iterator[None]:
    """These nodes keep posting their status (every 0.5 s) while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(0.5):
            for name in names:
                store.heartbeat(name)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


GOLDEN = "c0ffee" * 10 + "beef"  # the fleet's current golden image, as SHA256SUMS lists it


def kubectl_nodes(server: K3sTestServer) -> str:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl missing: tools/setup.sh installs kubernetes-client"
    return subprocess.run(
        [kubectl, "--kubeconfig", str(server.kubeconfig), "get", "nodes", "--no-headers"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def labels_of(fleet: Path) -> dict[str, str]:
    """What a personalized device of the current build carries."""
    labels = [*fleet_labels(load(fleet / "fleet.yaml")), image_label(GOLDEN)]
    return dict(label.split("=", 1) for label in labels)


def test_ready_notready_never_seen_unexpected_older(fleet: Path, server: K3sTestServer) -> None:
    labels = labels_of(fleet)
    store = server.kube.store
    store.register("edge-001", labels)
    store.register("edge-002", labels)
    store.register("edge-999", labels)  # carries the fleet label, not in the inventory
    with kubelets(store, "edge-001", "edge-999"):  # edge-002 stops reporting
        time.sleep(4.5)  # past the grace period edge-002 turns NotReady
        done = pifleet(
            "status", "fleet.yaml", "--kubeconfig", str(server.kubeconfig), "--json", cwd=fleet
        )
        seen = kubectl_nodes(server)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    states = {d["name"]: d for d in report["devices"]}
    assert states["edge-001"]["state"] == "Ready"
    assert states["edge-002"]["state"] == "NotReady"
    assert states["edge-002"]["reason"].startswith("NodeStatusUnknown")
    assert states["edge-002"]["since"]
    assert states["edge-003"]["state"] == "never seen"
    assert report["unexpected"] == ["edge-999"]
    assert (report["ready"], report["total"]) == (1, 3)

    rows = {line.split()[0]: line.split()[1] for line in seen.splitlines()}
    assert rows == {"edge-001": "Ready", "edge-002": "NotReady", "edge-999": "Ready"}


def test_all_ready_exits_zero_and_flags_an_older_image(fleet: Path, server: K3sTestServer) -> None:
    labels = labels_of(fleet)
    for name in ("edge-001", "edge-002"):
        server.kube.store.register(name, labels)
    server.kube.store.register("edge-003", {**labels, IMAGE: "0123456789ab"})
    with kubelets(server.kube.store, "edge-001", "edge-002", "edge-003"):
        done = pifleet("status", "fleet.yaml", "--kubeconfig", str(server.kubeconfig), cwd=fleet)
    assert done.returncode == 0, done.stderr
    assert "3/3 Ready" in done.stdout
    assert "0123456789ab (older)" in done.stdout


def test_bad_kubeconfig_and_unreachable_cluster_are_one_line(
    fleet: Path, server: K3sTestServer
) -> None:
    missing = pifleet("status", "fleet.yaml", "--kubeconfig", "nope.yaml", cwd=fleet)
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "kubeconfig not found" in missing.stderr
    kubeconfig = fleet / "down.yaml"
    kubeconfig.write_bytes(server.kubeconfig.read_bytes())
    server.set_down(True)
    down = pifleet("status", "fleet.yaml", "--kubeconfig", str(kubeconfig), cwd=fleet)
    assert down.returncode == 1
    assert down.stderr.count("\n") == 1 and "cannot reach the cluster" in down.stderr


def test_api_refuses_without_the_admin_token(server: K3sTestServer) -> None:
    """Like kube-apiserver with anonymous auth off: no credentials, 401 Status."""
    kubeconfig = server.kubeconfig.read_text().replace(server.kube.admin_token, "wrong")
    bad = server.state_dir / "bad.yaml"
    bad.write_text(kubeconfig)
    kubectl = shutil.which("kubectl")
    assert kubectl is not None
    done = subprocess.run(
        [kubectl, "--kubeconfig", str(bad), "get", "nodes"], capture_output=True, text=True
    )
    assert done.returncode != 0 and "You must be logged in to the server" in done.stderr


def test_kubeconfig_is_private(server: K3sTestServer) -> None:
    assert server.kubeconfig.stat().st_mode & 0o777 == 0o600
    assert (server.state_dir / "kube-admin-token").stat().st_mode & 0o777 == 0o600


def test_each_device_shows_the_serial_of_the_card_it_was_flashed_on(
    fleet: Path, server: K3sTestServer
) -> None:
    """Issue 25: the flash ledger's latest ok card of each device; no column without one."""
    from builder.fleet.ledger import Ledger, Row

    labels = labels_of(fleet)
    server.kube.store.register("edge-001", labels)
    ledger = Ledger(fleet / "out/flash-ledger.csv")
    for device, serial, outcome in [("edge-001", "OLD-CARD", "ok"), ("edge-002", "BAD", "failed"),
                                    ("edge-001", "NEW-CARD", "ok")]:  # fmt: skip
        ledger.append(
            Row(
                device,
                "/dev/sdb",
                "Generic",
                "SD",
                serial,
                1 << 34,
                GOLDEN,
                "",
                "",
                1,
                "ok",
                outcome,
            )
        )
    with kubelets(server.kube.store, "edge-001"):
        report = pifleet(
            "status", "fleet.yaml", "--kubeconfig", str(server.kubeconfig), "--json", cwd=fleet
        )
        table = pifleet("status", "fleet.yaml", "--kubeconfig", str(server.kubeconfig), cwd=fleet)
    cards = {d["name"]: d["card"] for d in json.loads(report.stdout)["devices"]}
    assert cards == {"edge-001": "NEW-CARD", "edge-002": "", "edge-003": ""}
    assert "NEW-CARD" in table.stdout and "card" in table.stdout and "OLD-CARD" not in table.stdout
