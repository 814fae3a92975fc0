"""A kubeadm worker's container runtime: containerd and runc from Debian's packages for the
image's release, unpacked into the root without running anything, containerd on the systemd
cgroup driver.

| rule | source |
|---|---|
| the packages are `containerd` and `runc` of the image's Debian suite (os-release VERSION_CODENAME: Raspberry Pi OS is built on Debian's) and architecture, fetched and verified by apt: the InRelease signature, the Packages index, each .deb's hash | builder/sources/debfetch.py |
| an image that has /usr/bin/containerd and /usr/sbin/runc already keeps them; only the configuration is written. Ubuntu's packages are not Debian's: an Ubuntu base must bring them | - |
| unpacked as `dpkg-deb -x` does: every directory, file and link, root-owned, modes kept (maintainer scripts do not run: containerd's only enables its unit, done here) | deb(5); the package's debian/containerd.service |
| the dpkg database records both packages (a status stanza from the .deb's control file with `Status: install ok installed`, and the file list), so apt on the device knows them | deb-control(5), dpkg's /var/lib/dpkg/info/<package>.list |
| /etc/containerd/config.toml: version 2, the CRI plugin's runc runtime `io.containerd.runc.v2` with `SystemdCgroup = true`, as kubeadm requires with systemd | kubernetes.io "Container Runtimes" (systemd cgroup driver); containerd docs/cri/config.md |

The .deb files are cached under `$PIFLEET_CACHE/debs/<suite>-<arch>/`.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from builder.disk.entries import Directory, Entry, File, Symlink
from builder.disk.image import Image
from builder.plan import Plan
from builder.sources import debfetch
from builder.util.cache import cache_dir
from builder.util.errors import BuildError, UserError
from builder.util.run import run

PACKAGES = ("containerd", "runc")
HAVE = ("/usr/bin/containerd", "/usr/sbin/runc")
MIRROR = "http://deb.debian.org/debian"
CONFIG = "/etc/containerd/config.toml"
UNIT_WANTS = "/etc/systemd/system/multi-user.target.wants/containerd.service"
UNIT = "/usr/lib/systemd/system/containerd.service"
DPKG_STATUS = "/var/lib/dpkg/status"
MERGED = ("bin", "sbin", "lib", "lib64")  # links into /usr on a merged-/usr root
CONFIG_TEXT = """\
# Written by pifleet: containerd for a kubeadm worker (the kubelet's cgroup driver is systemd)
version = 2

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = true
"""


def apply(image: Image, plan: Plan) -> None:
    found = image.root.stat_many(list(HAVE))
    if not all(found.values()):
        flavor = plan.flavor
        if flavor.family == "ubuntu":
            raise UserError(
                f"{plan.base.origin}: Ubuntu: give a base with containerd and runc installed"
                " (pifleet adds Debian's, which are not Ubuntu's)"
            )
        install(image, debs(flavor.codename, flavor.arch))
    image.root.stage(Directory("/etc/containerd", 0o755))
    image.root.stage(File(CONFIG, 0o644, data=CONFIG_TEXT.encode()))
    image.root.stage(Symlink(UNIT_WANTS, UNIT))


def debs(suite: str, arch: str) -> list[Path]:
    """containerd's and runc's .deb for `suite` and `arch`, from the cache or fetched."""
    cache = cache_dir("debs") / f"{suite}-{arch}"
    cached = [sorted(cache.glob(f"{name}_*.deb")) for name in PACKAGES]
    if all(cached):
        return [found[-1] for found in cached]
    with tempfile.TemporaryDirectory(prefix="pifleet-debs-") as scratch:
        fetched = debfetch.download(
            list(PACKAGES), arch, suite, MIRROR, Path(scratch) / "apt", Path(scratch) / "debs"
        )
        cache.mkdir(parents=True, exist_ok=True)
        for deb in fetched:
            shutil.copy(deb, cache / (deb.name + ".part"))
            (cache / (deb.name + ".part")).replace(cache / deb.name)
        return [cache / deb.name for deb in fetched]


def install(image: Image, packages: list[Path]) -> None:
    """Each .deb's files staged into the root, and the dpkg database told."""
    status = (image.root.read(DPKG_STATUS) or b"").decode("utf-8", "replace")
    tops = image.root.stat_many([f"/{top}" for top in MERGED])
    merged = frozenset(t[1:] for t, inode in tops.items() if inode and inode.kind == "symlink")
    for deb in packages:
        with tempfile.TemporaryDirectory(prefix="pifleet-deb-") as tmp:
            tree = Path(tmp) / "root"
            run(["dpkg-deb", "-x", str(deb), str(tree)], what=f"unpacking {deb.name}")
            entries = tree_entries(tree, merged)
            for entry in entries:
                image.root.stage(entry)
            control = _control(deb)
        name = _field(control, "Package")
        listed = "\n".join(["/."] + [e.path for e in entries]) + "\n"
        image.root.stage(File(f"/var/lib/dpkg/info/{name}.list", 0o644, data=listed.encode()))
        status = (
            _without(status, name) + control.rstrip("\n") + "\nStatus: install ok installed\n\n"
        )
    image.root.stage(File(DPKG_STATUS, 0o644, data=status.encode()))


def tree_entries(tree: Path, merged: frozenset[str] = frozenset()) -> list[Entry]:
    """Directories, files and links under `tree` as root-owned entries (paths from /); a
    path under a top directory the image has merged into /usr (`merged`: "lib", "bin", ...)
    goes under /usr, as dpkg on a merged-/usr system puts it."""
    entries: list[Entry] = []
    for path in sorted(tree.rglob("*")):
        parts = path.relative_to(tree).parts
        if parts[0] in merged:
            if len(parts) == 1:
                continue  # the image's link stays
            parts = ("usr", *parts)
        inside = "/" + "/".join(parts)
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            entries.append(Symlink(inside, str(path.readlink())))
        elif stat.S_ISDIR(mode):
            entries.append(Directory(inside, stat.S_IMODE(mode)))
        elif stat.S_ISREG(mode):
            entries.append(File(inside, stat.S_IMODE(mode), data=path.read_bytes()))
    return entries


def _control(deb: Path) -> str:
    done = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, check=False)
    if done.returncode != 0:
        raise BuildError(f"{deb.name}: not a Debian package ({done.stderr.decode().strip()})")
    return done.stdout.decode("utf-8", "replace")


def _field(control: str, key: str) -> str:
    for line in control.splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    raise BuildError(f"a .deb's control file has no {key}")


def _without(status: str, package: str) -> str:
    """The dpkg status text without `package`'s stanza."""
    stanzas = [s for s in status.split("\n\n") if s.strip()]
    kept = [s for s in stanzas if f"Package: {package}" not in s.splitlines()]
    return "".join(s.strip("\n") + "\n\n" for s in kept)
