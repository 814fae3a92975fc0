"""debugfs scripts: the commands that create what the build stages, reading what a batch of
commands printed (`stat`, `ls -p`), and resolving symlinks from `stat` results (`walk`)."""

from __future__ import annotations

import re
import stat
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from builder.disk.entries import Directory, Entry, Inode, Symlink
from builder.util.errors import BuildError, UserError
from builder.util.private import write_private


def quote(name: str | Path) -> str:
    """`name` as one debugfs argument: in double quotes, a quote doubled (debugfs's parser,
    lib/ss/parse.c). A line break would end the command and start another: refused."""
    text = str(name)
    if any(c in text for c in "\n\r\0"):
        raise UserError(f"{text!r}: a name with a line break or NUL cannot be written to the image")
    return '"' + text.replace('"', '""') + '"'


def sections(out: str, script: list[str]) -> list[str]:
    """What each command of `script` printed, found by the line debugfs echoes before running it
    (`debugfs: <command>`); "" for a command whose echo is missing. Errors go to stderr."""
    found: list[list[str]] = []
    echoes = iter(script)
    expected = next(echoes, None)
    for line in out.split("\n"):
        if expected is not None and line == f"debugfs: {expected}":
            found.append([])
            expected = next(echoes, None)
        elif found:
            found[-1].append(line)
    texts = ["\n".join(lines) for lines in found]
    return texts + [""] * (len(script) - len(texts))


def parse_listing(section: str) -> list[str]:
    """The names `ls -p` printed (/inode/mode/uid/gid/name/size/), without . and .."""
    names = []
    for line in section.splitlines():
        fields = line.split("/")
        if len(fields) >= 7 and fields[5] not in (".", ".."):
            names.append(fields[5])
    return sorted(names)


def walk(path: str, known: Mapping[str, Inode | None]) -> tuple[str, list[str]]:
    """Resolve every symlink in `path` (absolute links stay inside the filesystem) as far as the
    `stat` results in `known` tell: (the resolved path, []) or, when a result is missing,
    (the path reached if nothing further is a link, or "", the paths to stat next)."""
    parts = list(PurePosixPath(path).parts[1:])
    current = PurePosixPath("/")
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in (".", ".."):
            current = current.parent if part == ".." else current
            continue
        candidate = current / part
        if str(candidate) not in known:
            return _ahead(current, [part, *parts], known)
        inode = known[str(candidate)]
        if inode is None or inode.kind != "symlink" or inode.link_target is None:
            current = candidate
            continue
        hops += 1
        if hops > 40:
            raise BuildError(f"{path}: too many levels of symbolic links in the root filesystem")
        target = PurePosixPath(inode.link_target)
        base = PurePosixPath("/") if target.is_absolute() else current
        parts = list((base / target).parts[1:]) + parts
        current = PurePosixPath("/")
    return str(current), []


def _ahead(
    current: PurePosixPath, parts: list[str], known: Mapping[str, Inode | None]
) -> tuple[str, list[str]]:
    """The unknown paths from `current` down `parts`, up to a '.' or '..'; and the last of them
    when it is the whole remaining path."""
    wanted: list[str] = []
    for i, part in enumerate(parts):
        if part in (".", ".."):
            return "", wanted
        current = current / part
        if str(current) not in known:
            wanted.append(str(current))
        if i == len(parts) - 1:
            return str(current), wanted
    return "", wanted


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
                f"mkdir {quote(d)}",
                f"sif {quote(d)} mode 040755",
                f"sif {quote(d)} uid 0",
                f"sif {quote(d)} gid 0",
            ]
        elif inode.kind != "directory":
            raise BuildError(f"{d} exists in the root filesystem but is not a directory")
    return script


def entry_script(entry: Entry, inode: Inode | None, tmp: Path, index: int) -> list[str]:
    p = entry.path
    script = []
    if isinstance(entry, Directory):
        if inode is None:
            script.append(f"mkdir {quote(p)}")
        script.append(f"sif {quote(p)} mode 0{stat.S_IFDIR | entry.mode:o}")
    else:
        if inode is not None:
            if inode.kind == "directory":
                raise BuildError(f"{p} is a directory in the root filesystem; expected a file")
            script.append(f"rm {quote(p)}")
        if isinstance(entry, Symlink):
            script.append(f"symlink {quote(p)} {quote(entry.target)}")
        else:
            source = entry.source
            if source is None:
                source = tmp / f"f{index}"
                write_private(source, entry.data or b"")
            script += [
                f"write {quote(source)} {quote(p)}",
                f"sif {quote(p)} mode 0{stat.S_IFREG | entry.mode:o}",
            ]
    script += [f"sif {quote(p)} uid {entry.uid}", f"sif {quote(p)} gid {entry.gid}"]
    return script
