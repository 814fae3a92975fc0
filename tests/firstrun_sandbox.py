"""firstrun.sh run for real by `sh` in a throwaway root: a user namespace (`unshare -rm`) and a
chroot whose /usr is the host's, bind-mounted read-only, and whose system tools (useradd,
systemctl, raspi-config...) are shims that record their arguments. Nothing runs as the host's
root, and nothing outside the throwaway root can be written."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from builder.layout import FIRSTRUN_NAME
from builder.seed import systemd

# The tools firstrun.sh calls that would change the host or need a real system: each records its
# name and arguments (unit separator between them, record separator after) and does the least
# the script needs of it.
SHIMS = {
    "getent": 'case "$1" in passwd) echo "pi:x:1000:1000::/home/pi:/bin/bash";; esac',
    "id": "exit 1",
    "useradd": 'for last; do :; done; mkdir -p "/home/$last"',
    "install": 'for last; do :; done; mkdir -p "$last"',
    **dict.fromkeys(
        ("usermod", "chown", "systemctl", "ssh-keygen", "raspi-config", "rfkill",
         "dpkg-reconfigure", "locale-gen", "update-locale", "rpi-usb-gadget"),
        ":",
    ),
}  # fmt: skip
US, RS = "\x1f", "\x1e"


@dataclass(frozen=True)
class Ran:
    root: Path  # the throwaway root after the run
    calls: list[list[str]]  # argv of every shim call, in order
    returncode: int
    stderr: str

    def read(self, path: str) -> str:
        return (self.root / path.lstrip("/")).read_text()

    def planted(self) -> list[Path]:
        """Files outside what firstrun.sh is meant to write: what an injected command left."""
        return [p for p in self.root.rglob("*PWNED*")] + [p for p in (self.root / "root").iterdir()]


def userns_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


def run_firstrun(script: bytes, tmp: Path, boot_mount: str = "/boot/firmware") -> Ran:
    """Run `script` as firstrun.sh in a throwaway root under `tmp`."""
    root = tmp / "root"
    for d in ("usr", "etc/sudoers.d", "etc/default", "etc/wpa_supplicant", "home", "root", "dev", "tmp", "shims",
              "var/lib/systemd/rfkill", boot_mount.lstrip("/")):  # fmt: skip
        (root / d).mkdir(parents=True, exist_ok=True)
    for name in ("bin", "sbin", "lib", "lib64"):
        (root / name).symlink_to(f"usr/{name}")
    shutil.copy("/etc/ld.so.cache", root / "etc/ld.so.cache")
    (root / "etc/hostname").write_text("raspberrypi\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n")
    (root / "dev/null").touch()
    (root / boot_mount.lstrip("/") / "cmdline.txt").write_text(
        "console=tty1 root=PARTUUID=1-02 " + " ".join(systemd.cmdline_words(boot_mount)) + "\n"
    )
    (root / boot_mount.lstrip("/") / FIRSTRUN_NAME).write_bytes(script)
    for name, body in SHIMS.items():
        shim = root / "shims" / name
        record = f"{{ printf '%s{US}' \"${{0##*/}}\" \"$@\"; printf '{RS}'; }} >> /shims.log"
        shim.write_text(f"#!/bin/sh\n{record}\n{body}\n")
        shim.chmod(0o755)
    inner = f"cd / && PATH=/shims:/usr/sbin:/usr/bin exec /bin/sh {boot_mount}/{FIRSTRUN_NAME}"
    setup = (
        f"mount --bind /usr {root}/usr && mount -o remount,bind,ro {root}/usr"
        f" && mount --bind /dev/null {root}/dev/null && exec chroot {root} /bin/sh -c '{inner}'"
    )
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", setup], capture_output=True, text=True, timeout=60
    )
    log = root / "shims.log"
    text = log.read_text() if log.exists() else ""
    calls = [record.split(US)[:-1] for record in text.split(RS)[:-1]]
    return Ran(root, calls, proc.returncode, proc.stderr)
