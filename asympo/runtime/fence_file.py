"""The job lease's fencing token, applied to directories: a learner that lost its job must not change files.

Redis checks the token on every write; a shared volume cannot. So the learner that takes a job writes
its token into `.fence` in each directory it writes (its versions in the weight store, its
checkpoints), and checks that file right before each step that changes what readers see (renaming a
version into place, pointing LATEST): a stalled learner that wakes up after another took over finds a
newer token there and stops. What is left between the check and the rename is one system call.
"""

from __future__ import annotations

from pathlib import Path

from asympo.bus.fence import Fenced
from asympo.runtime.durable import write_atomically

NAME = ".fence"


class StaleFence(Fenced):
    """A newer learner has claimed the directory."""


def _read(directory: Path) -> int:
    try:
        return int((Path(directory) / NAME).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def claim(directory: Path, token: int) -> None:
    """Record `token` as the directory's owner; StaleFence if a newer token is there already."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if _read(directory) > token:
        raise StaleFence(f"{directory} belongs to the learner with token {_read(directory)}, not {token}")
    write_atomically(directory / NAME, str(token))


def check(directory: Path, token: int | None) -> None:
    """StaleFence unless `token` (None: no fencing) is the newest that claimed the directory."""
    if token is not None and _read(directory) > token:
        raise StaleFence(f"{directory} belongs to the learner with token {_read(directory)}, not {token}")
