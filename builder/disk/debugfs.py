"""debugfs scripts: the commands that create what the build stages, and reading `stat`."""

from __future__ import annotations

import re
import stat
from pathlib import Path, PurePosixPath

from builder.disk.entries import Directory, Entry, Inode, Symlink
from builder.util.errors import BuildError


def parse_stat(section: str) -> Inode | None:
    head = re.search(r"Type: (\S+)\s+Mode:\s+(\d+)", section)
    owner = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+).*?Size: (\d+)", section)
    if head is None or owner is None:
        return None
    link = re.search(r'Fast link dest: "(.*)"', section)
    return Inode(
        kind=head.group(1),
        mode=int(head.group(2), 8),
        uid=int(owner.group(1)),
        gid=int(owner.group(2)),
        size=int(owner.group(3)),
        link_target=link.group(1) if link else None,
    )


def parents(paths: set[str]) -> set[str]:
    out: set[str] = set()
    for path in paths:
        for parent in PurePosixPath(path).parents:
            if str(parent) != "/":
                out.add(str(parent))
    return out


def mkdir_script(dirs: set[str], current: dict[str, Inode | None], explicit: set[str]) -> list[str]:
    """Create missing parent directories (0755 root), shallowest first."""
    script = []
    for d in sorted(dirs - explicit, key=lambda p: p.count("/")):
        inode = current.get(d)
        if inode is None:
            script += [
                f'mkdir "{d}"',
                f'sif "{d}" mode 040755',
                f'sif "{d}" uid 0',
                f'sif "{d}" gid 0',
            ]
        elif inode.kind != "directory":
            raise BuildError(f"{d} exists in the root filesystem but is not a directory")
    return script


def entry_script(entry: Entry, inode: Inode | None, tmp: Path, index: int) -> list[str]:
    p = entry.path
    script = []
    if isinstance(entry, Directory):
        if inode is None:
            script.append(f'mkdir "{p}"')
        script.append(f'sif "{p}" mode 0{stat.S_IFDIR | entry.mode:o}')
    else:
        if inode is not None:
            if inode.kind == "directory":
                raise BuildError(f"{p} is a directory in the root filesystem; expected a file")
            script.append(f'rm "{p}"')
        if isinstance(entry, Symlink):
            script.append(f'symlink "{p}" "{entry.target}"')
        else:
            source = entry.source
            if source is None:
                source = tmp / f"f{index}"
                source.write_bytes(entry.data or b"")
            script += [f'write "{source}" "{p}"', f'sif "{p}" mode 0{stat.S_IFREG | entry.mode:o}']
    script += [f'sif "{p}" uid {entry.uid}', f'sif "{p}" gid {entry.gid}']
    return script
