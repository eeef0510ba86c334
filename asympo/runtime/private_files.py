"""Secrets kept in files only their owner can read: the local stack's tokens, Redis URL and admin name."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file created with mode 0600, so no other user can read it at any moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)  # an existing file keeps its old mode through O_CREAT


def saved_secret(path: Path, make: Callable[[], str]) -> tuple[str, bool]:
    """The secret stored in `path`, or a new one from `make()` written there privately; (secret, created)."""
    if path.is_file():
        return path.read_text().strip(), False
    secret = make()
    write_private(path, secret)
    return secret, True
