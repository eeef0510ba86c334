"""Scratch directories beside versions (`.v3.tmp+…`, `.v3.fetch+…`, `.v3.trash+…`) and the sweep of those
a killed process left behind.

A version is written (or fetched) into a scratch directory and renamed into place; an old one is renamed
to a trash name before it is deleted. A process killed in between leaves the scratch directory forever,
so each name carries its writer: host, pid namespace, pid and the process's start time. A sweep removes
a leftover whose writer is known to be dead (same host and pid namespace, and that pid is gone or is a
newer process); the writer of a name from another machine cannot be asked, so that leftover goes only
once nothing in it has changed for `grace_s`. Names from before owners were recorded (`.v3.tmp-…`,
`.trash-…`) are treated like foreign ones.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KINDS = ("tmp", "fetch", "trash")
# A foreign writer's scratch directory is kept while anything in it changed this recently: a live
# writer keeps creating and appending files, a dead one stops.
DEFAULT_GRACE_S = 3600.0

_OWNED = re.compile(
    r"^\.(?P<name>[^+]+?)\.(?P<kind>tmp|fetch|trash)\+(?P<host>[^+]+)\+(?P<ns>\d+)\+(?P<pid>\d+)\+(?P<start>\d+)\+"
)
_LEGACY = re.compile(r"^\.(v\d+\.(tmp|fetch)-|trash-)")


@dataclass(frozen=True)
class Owner:
    """Who made a scratch directory: enough to tell, on the same machine, whether it still runs."""

    host: str
    ns: int
    pid: int
    start: int

    def token(self) -> str:
        """The owner as it appears in a scratch directory's name."""
        return f"{self.host}+{self.ns}+{self.pid}+{self.start}"


def _start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), None if there is no such process (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the command name may contain spaces


def _pid_namespace() -> int:
    # Containers of one pod share a hostname but not their pids: the namespace tells them apart.
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def this_process() -> Owner:
    """The running process as an owner."""
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:63] or "host"
    return Owner(host, _pid_namespace(), os.getpid(), _start_ticks(os.getpid()) or 0)


def scratch_dir(parent: Path, name: str, kind: str) -> Path:
    """Create a scratch directory for `name` (e.g. "v3") in `parent`, named after this process."""
    return Path(tempfile.mkdtemp(prefix=f".{name}.{kind}+{this_process().token()}+", dir=parent))


def trash_name(path: Path) -> Path:
    """Where `path` is renamed before it is deleted (unique, and owned by this process)."""
    return path.with_name(f".{path.name}.trash+{this_process().token()}+{time.monotonic_ns()}")


def owner_of(name: str) -> Owner | None:
    """The owner recorded in a scratch directory's name; None for names without one."""
    m = _OWNED.match(name)
    return Owner(m["host"], int(m["ns"]), int(m["pid"]), int(m["start"])) if m else None


def is_scratch(name: str) -> bool:
    """Whether a directory entry is a scratch or trash directory (owned or from before owners)."""
    return bool(_OWNED.match(name) or _LEGACY.match(name))


def _alive(owner: Owner, me: Owner) -> bool | None:
    """True/False when this machine can tell; None for a writer elsewhere."""
    if (owner.host, owner.ns) != (me.host, me.ns):
        return None
    if me.start == 0:  # no /proc: the pid alone, which may have been reused (keeps more, never less)
        try:
            os.kill(owner.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    return _start_ticks(owner.pid) == owner.start


def _last_change(path: Path) -> float:
    newest = path.lstat().st_mtime
    for root, dirs, files in os.walk(path):
        for entry in (*dirs, *files):
            try:
                newest = max(newest, os.lstat(os.path.join(root, entry)).st_mtime)
            except OSError:
                pass  # deleted meanwhile
    return newest


def removable(path: Path, grace_s: float = DEFAULT_GRACE_S, me: Owner | None = None) -> bool:
    """Whether a scratch directory is owned by no live writer (see the module docstring)."""
    owned = _OWNED.match(path.name)
    if owned:
        alive = _alive(owner_of(path.name), me or this_process())
        if alive is not None:
            return not alive
    if (owned and owned["kind"] == "trash") or path.name.startswith(".trash-"):
        # Trash is never read: a foreign owner still deleting it only races us to the same end.
        return True
    try:
        return time.time() - _last_change(path) > grace_s
    except OSError:
        return False  # vanished: its owner finished


def sweep_dir(parent: Path, grace_s: float = DEFAULT_GRACE_S) -> list[str]:
    """Remove the scratch directories in `parent` no live writer owns; returns the names removed."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    me, removed = this_process(), []
    for entry in sorted(parent.iterdir()):
        if not (entry.is_dir() and not entry.is_symlink() and is_scratch(entry.name)):
            continue
        if removable(entry, grace_s, me):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    if removed:
        log.info("removed leftover scratch directories", extra={"dir": str(parent), "removed": removed})
    return removed
