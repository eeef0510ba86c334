"""Writing files so that a crash (of the process or the machine) leaves either the old or the new content."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename into it, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file under path, then every directory, deepest first."""
    path = Path(path)
    dirs = [path]
    for f in path.rglob("*"):
        if f.is_dir():
            dirs.append(f)
        elif f.is_file():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(d)


def write_atomically(path: Path, text: str) -> None:
    """Replace a small file's content: write beside it, fsync, rename over it, fsync the directory."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
