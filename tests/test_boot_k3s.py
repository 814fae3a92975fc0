"""QEMU boots against K3s servers as they really are: one golden image, built once for the
module, and per boot a test server in another mode and a token through the boot partition.

(a) bootstrap token + custom CA bundle (root + intermediate) + an address the certificate
    does not name (the guest reaches the host as 10.0.2.2);
(b) in the same boot: the server unreachable for 10 s, then /cacerts answers 503 for 10 s,
    then a Bearer token gets 403 for 10 s more (API server down);
(c) a wrong password: reported clearly, then joins without a reboot once the test server's
    password is switched mid-boot (marked `faults`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.disk.image import Image
from builder.qemu.boottest import BootOptions, boot_test
from builder.qemu.console import BootResult
from builder.qemu.power import Hooks
from builder.testserver.server import K3sTestServer
from builder.util.secret import Secret
from tests.boot_helpers import (
    BOOT_TIMEOUT,
    DEVICE,
    base_image,
    device_image,
    guest_disk,
    image_sha256,
)
from tests.conftest import BOOT_AGENT
from tests.pi_distros import debian_raspi

pytestmark = pytest.mark.slow
RECHECK = 15  # agent.recheck_interval of the golden image (seconds)


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A personalized arm64 image laid out as Debian's image for the Raspberry Pi
    (tests/pi_distros.debian_raspi: root=LABEL=RASPIROOT, the kernel both in the root's /boot
    and on the FAT): under -M virt it boots with its own Debian kernel and initramfs, the
    default run's one boot on that path (the shared arm64 device is laid out as Pi OS, with a
    Pi kernel only). Each boot runs on its own qcow2 overlay."""
    tmp = tmp_path_factory.mktemp("k3s-golden")
    card = debian_raspi(base_image("arm64"), tmp / "debian-raspi.img", tmp)
    return device_image(tmp / "device", "arm64", BOOT_AGENT, base_path=card)[0]


def boot(
    image: Path, server: K3sTestServer, token: str, tmp: Path, server_down_for: float = 0.0
) -> BootResult:
    opts = BootOptions(
        image=image, timeout=float(BOOT_TIMEOUT), keep=tmp / "vm", token=Secret(token)
    )
    return boot_test(opts, hooks=Hooks(test_server=server, server_down_for=server_down_for))


def agent_lines(result: BootResult) -> list[str]:
    return [ln for ln in result.console if "pifleet-firstboot:" in ln]


def test_a_real_server_as_it_comes_up_with_a_custom_ca_and_a_bootstrap_token(
    golden: Path, tmp_path: Path
) -> None:
    """(a) and (b) in one boot: a bootstrap token, a custom CA bundle (root + intermediate), an
    address the certificate does not name; the server unreachable for 10 s after the agent's
    verify starts, then /cacerts 503 for 10 s, then the Bearer token 403 until 20 s (10 s phases:
    with backoff_cap 5 the agent meets each at least twice)."""
    phases = {"cacerts_error": 10.0, "apiserver_down": 20.0}
    state = tmp_path / "s"
    with K3sTestServer(state_dir=state, ca_kind="bundle", named=False, phases=phases) as server:
        token = server.mint_token("bootstrap")
        before = image_sha256(golden)
        result = boot(golden, server, token, tmp_path, server_down_for=10.0)
        assert result.passed and result.joined, (result.failure, result.tail())
        assert not any("under QEMU:" in ln for ln in result.console), "not the image's own kernel"
        assert any("(cmdline.txt: root=LABEL=RASPIROOT)" in ln for ln in result.console)
        assert image_sha256(golden) == before, "the image was written"
        assert server.registered_nodes() == [DEVICE]
        lines = "\n".join(agent_lines(result))
        # (a) the bundle's root is pinned and the bootstrap token goes as Bearer
        assert f"server CA pinned (sha256 {server.ca_hash[:16]}" in lines
        bearer = [r for r in server.requests if r.path == "/v1-k3s/readyz"]
        assert bearer and all(r.had_credentials for r in bearer)  # 403 while the API is down
        assert bearer[-1].authorized
        secret = token.rsplit(".", 1)[1]
        assert secret not in "\n".join(result.console)
    # the server unreachable at first: the agent met it and retried
    waits = [ln for ln in result.console if "verify: waiting for the server" in ln]
    assert len(waits) >= 2, "the agent never met the unreachable server"
    # (b) then a restarting server: /cacerts 5xx, then the API server not up for Bearer
    assert "/cacerts answered 503" in lines
    assert "bootstrap token not accepted yet (403)" in lines
    assert "failed state=" not in lines
    marks = dict(result.milestones)
    assert marks["joined"] - marks["agent: verify"] >= 10.0 + 20.0
    assert K3sTestServer(state_dir=state).registered_nodes() == [DEVICE]
    # Debian's first boot rewrote cmdline.txt (rpi-reconfigure-raspi-firmware.service); the
    # memory cgroup K3s needs is still there, from /etc/default/raspi-extra-cmdline
    assert any("raspi-firmware stand-in: cmdline.txt is now:" in ln for ln in result.console)
    (tmp_path / "after").mkdir()
    disk, _root = guest_disk(tmp_path / "vm" / "disk.qcow2", tmp_path / "after")
    rewritten = (Image.open(disk).boot.read("/cmdline.txt") or b"").decode().split()
    assert rewritten[-1] == "rootwait", f"cmdline.txt was not rewritten: {rewritten}"
    assert {"cgroup_memory=1", "cgroup_enable=memory"} <= set(rewritten), rewritten


@pytest.mark.faults
def test_wrong_password_reported_then_joins_without_a_reboot(golden: Path, tmp_path: Path) -> None:
    """The third boot (~2.5 min here) is left out of the default run (addopts -m 'not
    faults'); `pytest -m faults tests/test_boot_k3s.py` runs it."""
    with K3sTestServer(state_dir=tmp_path / "s") as server:
        later = "a-token-the-operator-adds-on-the-server-later"
        token = server.mint_token().rsplit(":", 1)[0] + ":" + later
        switched: list[float] = []

        def on_milestone(name: str, at: float) -> None:
            if name == "agent failed: verify":
                server.set_password(later)
                switched.append(at)

        opts = BootOptions(
            image=golden, timeout=float(BOOT_TIMEOUT), keep=tmp_path / "vm", token=Secret(token)
        )
        result = boot_test(opts, on_milestone, Hooks(test_server=server, tolerate_failures=True))
        assert switched, result.tail()
        assert result.passed and result.joined, (result.failure, result.tail())
        assert not any("under QEMU:" in ln for ln in result.console), "not the image's own kernel"
        assert any("reason=the server rejected the token (401" in v for v in result.verdicts)
        lines = "\n".join(agent_lines(result))
        assert f"checking again in about {RECHECK} s (no reboot needed)" in lines
        assert lines.count("state=load") == 1, "joined without a reboot or agent restart"
        assert later not in "\n".join(result.console)
        assert server.registered_nodes() == [DEVICE] and result.node == DEVICE
