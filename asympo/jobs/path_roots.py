"""Where a job may read files from: model and dataset paths confined to the operator's directories.

A job spec comes from whoever holds the API token, and the learner reads what it names: without a
bound, `model.path` or `task.path` could open any file the learner can (its error messages would then
tell the submitter about it). Local paths must lie under one of the roots in $ASYMPO_MODEL_ROOTS or
$ASYMPO_DATA_ROOTS (os.pathsep-separated; `*` allows any path). Unset, the root is the service's working
directory. Symbolic links are followed before the check, so a link cannot lead out of a root.
Hugging Face hub names (`org/name`) and installed GGUF packages are not paths and are not confined.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

MODEL_ROOTS_ENV = "ASYMPO_MODEL_ROOTS"
DATA_ROOTS_ENV = "ASYMPO_DATA_ROOTS"
ANY_PATH = "*"
_ENV = {"model": MODEL_ROOTS_ENV, "data": DATA_ROOTS_ENV}
# What a Hugging Face hub id looks like; anything else that names a file or directory is a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?$")
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".gguf", ".safetensors")


class PathNotAllowed(ValueError):
    """A model or dataset path outside the directories the operator allows."""


def roots(kind: Literal["model", "data"], extra: tuple[Path, ...] = ()) -> list[Path] | None:
    """The allowed directories for `kind` (None: any path), resolved; `extra` are always allowed."""
    value = os.environ.get(_ENV[kind], "").strip()
    if value == ANY_PATH:
        return None
    listed = [Path(p).expanduser() for p in value.split(os.pathsep) if p.strip()] if value else [Path.cwd()]
    return [p.resolve() for p in [*listed, *extra]]


def is_local(name: str) -> bool:
    """Whether `name` names a file or directory on this machine rather than a hub dataset or model."""
    if name.startswith(("/", "./", "../", "~")) or ".." in Path(name).parts or "\\" in name:
        return True
    if name.endswith(_FILE_SUFFIXES) or not _HUB_ID.fullmatch(name):
        return True
    return Path(name).exists()


def confine(name: str, kind: Literal["model", "data"], field: str, extra: tuple[Path, ...] = ()) -> None:
    """PathNotAllowed unless `name` is a hub id or a path under one of the allowed roots for `kind`."""
    allowed = roots(kind, extra)
    if allowed is None or not is_local(name):
        return
    path = Path(name).expanduser()
    resolved = (path if path.is_absolute() else Path.cwd() / path).resolve()
    if not any(resolved.is_relative_to(root) for root in allowed):
        listed = ", ".join(str(r) for r in allowed[:5])
        raise PathNotAllowed(
            f"{field}: {name[:120]!r} is outside the directories this deployment reads {kind} files from "
            f"({listed}); put it under one of them, or ask the operator to add its directory to ${_ENV[kind]}"
        )


def check_job_paths(spec) -> None:
    """PathNotAllowed naming the first of the job's model and dataset paths that is not allowed."""
    from asympo.jobs.spec import GGUF_PREFIX  # spec imports nothing from here; avoid the cycle anyway

    model = spec.model.path
    # gguf:PACKAGE names an installed package (not a path); gguf:FILE is confined like any model path.
    source = model.removeprefix(GGUF_PREFIX)
    if source != "tiny":
        confine(source, "model", "model.path")
    for field in ("path", "heldout_path"):
        value = getattr(spec.task, field, None)
        if value:
            confine(value, "data", f"task.{field}")
