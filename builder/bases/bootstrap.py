"""Bootstrapping a Debian root filesystem for a foreign architecture, fast.

mmdebstrap installs the packages under qemu-user emulation. What made this
slow is avoided: no initramfs is generated in the chroot (initramfs-tools is
never installed; the kernel package is unpacked, not installed), and Python's
byte-compilation is diverted to a no-op during installation and done natively
on the host afterwards when a matching python3.X exists (else in the chroot).
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from builder.util.errors import BuildError, UserError
from builder.util.run import require_tool, run

log = logging.getLogger("pifleet.base")

EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/lintian/*",
)


@dataclass(frozen=True)
class Bootstrap:
    suite: str
    arch: str
    mirror: str
    packages: tuple[str, ...]
    kernel_meta: str  # e.g. linux-image-arm64; its versioned dependency is unpacked
    python: str  # the suite's python3.X, whose byte-compilation is moved to the host

    @property
    def diverted(self) -> dict[str, str]:
        """Files replaced while packages install, and their stand-in content: work that would
        run emulated and is either redone natively afterwards or not needed in a base."""
        noop = "#!/bin/sh\n"
        return {
            f"/usr/lib/{self.python}/py_compile.py": noop,  # python3.X postinst: byte-compiles the stdlib
            "/usr/bin/py3compile": noop,  # every python3-* postinst
            "/usr/bin/systemd-hwdb": noop,  # udev's hwdb.bin: see skip_hwdb
            "/usr/bin/ssh-keygen": noop,  # openssh-server postinst: host keys are removed anyway
            "/usr/share/i18n/SUPPORTED": "",  # locales postinst greps every supported locale
        }


def bootstrap(spec: Bootstrap, rootfs: Path, downloads: Path) -> None:
    """Install `spec` into the empty directory `rootfs`; kernel and busybox .debs go to `downloads`."""
    require_tool("mmdebstrap", "mmdebstrap")
    if shutil.which("arch-test") is None:
        raise UserError(
            "arch-test not found: install the 'arch-test' package (tools/setup.sh does)"
        )
    ensure_binfmt(spec.arch)
    downloads.mkdir(parents=True, exist_ok=True)
    argv = [
        "mmdebstrap",
        "--variant=minbase",
        f"--arch={spec.arch}",
        "--mode=root",
        "--format=directory",
        f"--include={','.join(spec.packages)}",
        "--aptopt=Acquire::Retries 3",
        *(f"--dpkgopt={x}" for x in EXCLUDES),
        f"--essential-hook={_divert_hook(spec)}",
        f"--customize-hook={_download_hook(spec, downloads)}",
        f"--customize-hook={_undivert_hook(spec)}",
        spec.suite,
        str(rootfs),
        spec.mirror,
    ]
    log.info("installing Debian %s %s packages (mmdebstrap, qemu-user)", spec.suite, spec.arch)
    output: list[str] = []
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # minutes of work: show mmdebstrap's own progress lines
            output.append(line)
            if line.startswith("I: "):
                log.info("  mmdebstrap: %s", line[3:].rstrip().split(" in shell: ")[0])
    if proc.returncode != 0:
        text = "".join(output)
        mismatch = index_mismatch(text)
        if mismatch is not None:
            raise BuildError(f"Debian {spec.suite} {spec.arch}: {mismatch}")
        raise BuildError(f"mmdebstrap failed: {first_error(text)}")


def first_error(output: str) -> str:
    """The line that says why: apt's first `E:` (later ones only say that something failed)."""
    errors = [ln[2:].strip() for ln in output.splitlines() if ln.startswith("E:")]
    return (errors or [ln for ln in output.splitlines() if ln.strip()][-1:] or ["no output"])[0]


FETCH_FAILED = re.compile(r"^E: Failed to fetch (\S+)\s+(.*)$")
UNEXPECTED_SIZE = re.compile(r"File has unexpected size \((\d+) != (\d+)\)")
FILESIZE = re.compile(r"^\s*- Filesize:(\d+)")


def index_mismatch(output: str) -> str | None:
    """One line for apt's "index does not match its Release file" failure (a mirror caught
    mid-sync, or broken): which index, the sizes when apt names them, and the way out."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        failed = FETCH_FAILED.match(line)
        if failed is None:
            continue
        url, reason = failed.groups()
        size = UNEXPECTED_SIZE.search(reason)
        if size is not None:
            served, listed = size.groups()
            detail = f"{served} bytes served, {listed} listed"
        elif reason.startswith("Hash Sum mismatch"):
            detail = "hash sum mismatch" + _hash_sizes(lines[i + 1 :])
        else:
            continue
        return (
            f"the mirror's index {url} does not match its Release file ({detail}; mirror sync "
            "in progress?): try again later, or another --suite or --mirror"
        )
    return None


def _hash_sizes(details: list[str]) -> str:
    """`, N bytes served, M listed` from the Filesize lines under apt's "Hashes of expected
    file:" and "Hashes of received file:", when both are there."""
    sizes: dict[str, str] = {}
    section = ""
    for line in details:
        if not line.startswith(" "):
            break
        if "Hashes of expected file" in line:
            section = "listed"
        elif "Hashes of received file" in line:
            section = "served"
        elif (size := FILESIZE.match(line)) is not None and section:
            sizes.setdefault(section, size.group(1))
    if len(sizes) < 2:
        return ""
    return f", {sizes['served']} bytes served, {sizes['listed']} listed"


def _divert_hook(spec: Bootstrap) -> str:
    """Put the stand-ins of `spec.diverted` in place before the non-essential packages install."""
    steps = []
    for path, content in spec.diverted.items():
        steps.append(
            f'dpkg-divert --root "$1" --quiet --local --rename --divert {path}.pifleet --add {path}'
            f' && mkdir -p "$1{Path(path).parent}" && printf {shlex.quote(content)} > "$1{path}"'
            f' && chmod 0755 "$1{path}"'
        )
    return " && ".join(steps)


def _undivert_hook(spec: Bootstrap) -> str:
    steps = []
    for path in spec.diverted:
        steps.append(
            f'rm -f "$1{path}" && dpkg-divert --root "$1" --quiet --rename --remove {path}'
        )
    return " && ".join(steps)


def _download_hook(spec: Bootstrap, downloads: Path) -> str:
    """Fetch the kernel image and busybox-static .debs with mmdebstrap's apt, natively."""
    return (
        f'cd "{downloads}" && export APT_CONFIG="$MMDEBSTRAP_APT_CONFIG" && '
        f"kernel=$(apt-cache depends {spec.kernel_meta} | "
        "awk '/Depends: linux-image-[0-9]/ {print $2; exit}') && "
        'apt-get download -q "$kernel" busybox-static >/dev/null'
    )


def ensure_binfmt(arch: str) -> None:
    """Register qemu-user for `arch` with binfmt_misc (root; needed only by `pifleet base`)."""
    name = {"arm64": "qemu-aarch64", "armhf": "qemu-arm"}[arch]
    misc = Path("/proc/sys/fs/binfmt_misc")
    if (misc / name).exists():
        return
    if not (misc / "register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(misc)], what="mounting binfmt_misc")
    conf = Path(f"/usr/lib/binfmt.d/{name}.conf")
    if not conf.exists():
        raise UserError(f"{conf} not found: install the 'qemu-user-static' package")
    rule = next(ln for ln in conf.read_text().splitlines() if ln.startswith(":"))
    try:
        (misc / "register").write_text(rule)
    except OSError as exc:
        raise BuildError(f"cannot register {name} with binfmt_misc: {exc.strerror}") from None


def unpack_kernel(rootfs: Path, downloads: Path) -> str:
    """Unpack the downloaded linux-image .deb into `rootfs` (no maintainer scripts); its version."""
    debs = sorted(downloads.glob("linux-image-*.deb"))
    if not debs:
        raise BuildError("the kernel package was not downloaded")
    _unpack_keeping_symlinks(debs[-1], rootfs)
    versions = sorted(p.name.removeprefix("vmlinuz-") for p in (rootfs / "boot").glob("vmlinuz-*"))
    if not versions:
        raise BuildError(f"{debs[-1].name} has no /boot/vmlinuz-*")
    version = versions[-1]
    run(["depmod", "-b", str(rootfs), version], what="depmod")
    (rootfs / "boot/vmlinuz").unlink(missing_ok=True)
    (rootfs / "boot/vmlinuz").symlink_to(f"vmlinuz-{version}")
    return version


def _unpack_keeping_symlinks(deb: Path, rootfs: Path) -> None:
    """`dpkg-deb -x`, except that directories `rootfs` has as symlinks stay symlinks: with a
    merged /usr (/lib -> usr/lib), Bookworm's kernel package still ships /lib/modules, and
    `dpkg-deb -x` would replace the /lib link with a directory holding only the modules."""
    argv = ["tar", "-x", "--keep-directory-symlink", "-C", str(rootfs)]
    with subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE
    ) as deb_out:
        tar = subprocess.run(argv, stdin=deb_out.stdout, capture_output=True, check=False)
    if deb_out.returncode != 0 or tar.returncode != 0:
        why = tar.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["dpkg-deb failed"]
        raise BuildError(f"unpacking {deb.name} failed: {why[0]}")


def busybox_binary(downloads: Path, scratch: Path) -> Path:
    debs = sorted(downloads.glob("busybox-static_*.deb"))
    if not debs:
        raise BuildError("busybox-static was not downloaded")
    run(["dpkg-deb", "-x", str(debs[-1]), str(scratch)], what="unpacking busybox-static")
    for candidate in ("usr/bin/busybox", "bin/busybox"):  # merged /usr or not
        if (scratch / candidate).is_file():
            return scratch / candidate
    raise BuildError(f"{debs[-1].name} has no busybox binary")


def set_default_locale(rootfs: Path, locale: str) -> None:
    """/etc/locale.gen listing every supported locale with only `locale` enabled (as the
    locales package writes it; its postinst ran with an empty list, see `diverted`), that
    locale built (emulated, seconds) and made the default: as Pi OS ships en_GB.UTF-8, so
    a seed asking for the default locale costs the first boot nothing."""
    supported = (rootfs / "usr/share/i18n/SUPPORTED").read_text().splitlines()
    lines = [
        "# This file lists locales that you wish to have built. Run locale-gen after editing.",
        "",
    ]
    lines += [ln if ln.split()[0] == locale else f"# {ln}" for ln in supported if ln.strip()]
    (rootfs / "etc/locale.gen").write_text("\n".join(lines) + "\n")
    run(["chroot", str(rootfs), "locale-gen"], what="locale-gen in the new root filesystem")
    (rootfs / "etc/default/locale").write_text(f"LANG={locale}\n")


def skip_hwdb(rootfs: Path) -> None:
    """No udev hwdb.bin in a QEMU test base: building it takes minutes emulated, and udev works
    without it (it only adds vendor names and the like). Its first-boot rebuild is masked too,
    or every boot test would pay those minutes under TCG."""
    unit = rootfs / "etc/systemd/system/systemd-hwdb-update.service"
    unit.unlink(missing_ok=True)
    unit.symlink_to("/dev/null")


def compile_python(rootfs: Path, python: str) -> str:
    """Byte-compile the Python code in `rootfs`; natively when the host has the same python3.X."""
    targets = [f"/usr/lib/{python}", "/usr/lib/python3/dist-packages"]
    host = _host_python(python)
    if host is not None:
        argv = [host, "-m", "compileall", "-q", "-j0", "-s", str(rootfs), "-p", "/"]
        subprocess.run(argv + [str(rootfs) + t for t in targets], capture_output=True, check=False)
        return f"natively with {host}"
    subprocess.run(
        ["chroot", str(rootfs), f"/usr/bin/{python}", "-m", "compileall", "-q", "-j0", *targets],
        capture_output=True,
        check=False,
    )
    return "in the chroot (no host " + python + ": slower)"


def _host_python(python: str) -> str | None:
    candidates = [shutil.which(python)]
    candidates += [
        str(p) for p in sorted(Path.home().glob(f".pyenv/versions/{python[6:]}.*/bin/{python}"))
    ]
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.implementation.cache_tag)"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == "cpython-" + python[6:].replace(
            ".", ""
        ):
            return candidate
    return None
