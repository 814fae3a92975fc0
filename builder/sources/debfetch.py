"""Debian packages for a foreign architecture, fetched and verified by apt, without root.

apt runs with a private configuration under a scratch directory: its own sources list,
state, cache and an empty dpkg status, `APT::Architecture` set to the target. Nothing on the
host changes (no foreign dpkg architecture, no /etc/apt edit). apt checks the suite's
InRelease signature against Debian's archive keyring, the Packages index against the
Release file's hashes, and each .deb against the Packages index's SHA256, as the base build
(mmdebstrap's apt) does.
"""

from __future__ import annotations

from pathlib import Path

from builder.util.errors import BuildError, UserError
from builder.util.run import require_tool, run

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


def apt_config(scratch: Path, arch: str, suite: str, mirror: str) -> dict[str, str]:
    """An environment for apt-get/apt-cache that uses only `scratch`."""
    if not KEYRING.is_file():
        raise UserError(f"{KEYRING} not found: install the 'debian-archive-keyring' package")
    for sub in ("state/lists/partial", "cache/archives/partial", "etc/parts"):
        (scratch / sub).mkdir(parents=True, exist_ok=True)
    (scratch / "state/status").write_bytes(b"")
    sources = scratch / "etc/sources.list"
    sources.write_text(f"deb [signed-by={KEYRING}] {mirror} {suite} main\n")
    parts = scratch / "etc/parts"
    conf = scratch / "apt.conf"
    conf.write_text(
        f'Dir::State "{scratch}/state";\n'
        f'Dir::State::status "{scratch}/state/status";\n'
        f'Dir::Cache "{scratch}/cache";\n'
        f'Dir::Etc::sourcelist "{sources}";\n'
        f'Dir::Etc::sourceparts "{parts}";\n'
        f'Dir::Etc::parts "{parts}";\n'
        'Dir::Etc::preferences "/dev/null";\n'
        f'Dir::Etc::preferencesparts "{parts}";\n'
        f'APT::Architecture "{arch}";\n'
        f'APT::Architectures {{ "{arch}"; }};\n'
        'APT::Sandbox::User "root";\n'
        'Acquire::Languages "none";\n'
        'Acquire::Retries "3";\n'
        'Debug::NoLocking "true";\n'
    )
    return {"APT_CONFIG": str(conf), "LC_ALL": "C"}


def download(
    packages: list[str], arch: str, suite: str, mirror: str, scratch: Path, out: Path
) -> list[Path]:
    """Download `packages` (a name, or `depends:NAME` for NAME's first versioned
    linux-image dependency) for `arch` from `suite` into `out`; the .deb files, in order."""
    require_tool("apt-get", "apt")
    env = apt_config(scratch, arch, suite, mirror)
    run(["apt-get", "update", "-q"], what=f"apt-get update ({mirror} {suite} {arch})", env=env)
    names = [_resolve(p, env) for p in packages]
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.glob("*.deb"))
    run(["apt-get", "download", "-q", *names], what="apt-get download", cwd=out, env=env)
    found = []
    for name in names:
        debs = sorted(p for p in set(out.glob(f"{name}_*.deb")) - before)
        if not debs:
            raise BuildError(f"apt-get download gave no .deb for {name}")
        found.append(debs[-1])
    return found


def _resolve(package: str, env: dict[str, str]) -> str:
    if not package.startswith("depends:"):
        return package
    meta = package.removeprefix("depends:")
    done = run(["apt-cache", "depends", meta], what=f"apt-cache depends {meta}", env=env)
    for line in done.stdout.decode(errors="replace").splitlines():
        word = line.split(":", 1)
        if len(word) == 2 and word[0].strip() == "Depends":
            name = word[1].strip()
            if name.startswith("linux-image-") and name[len("linux-image-") :][:1].isdigit():
                return name
    raise BuildError(f"{meta} names no versioned linux-image package")
