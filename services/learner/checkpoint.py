"""Checkpoints: sharded model and optimizer (torch.distributed.checkpoint), RNG per rank, and job counters.

Every checkpoint goes to a directory of its own (`step-<step>-<unique>`), never over an existing one.
It is complete once its `meta.json` exists: every rank writes its shards and RNG, all ranks meet at a
barrier, rank 0 fsyncs the directory tree and writes meta.json atomically. `LATEST` then names it
(written beside, fsynced, renamed, directory fsynced). Older checkpoints are deleted only after that,
keeping the newest `keep` complete ones, so a crash at any point leaves a complete checkpoint that
LATEST names or that the fallback finds.

Loading tries LATEST's checkpoint, then the other complete ones, newest step first (a LATEST that is
empty, unreadable or names a missing directory is not the end of the job). When checkpoints existed
but none can be loaded, `CheckpointError` stops the learner: it never starts over from the base model
silently.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from asympo.runtime import fence_file
from asympo.runtime.durable import fsync_tree, write_atomically

from .checkpoint_reader import IndexCheckedReader
from .distributed import World, barrier, broadcast

log = logging.getLogger(__name__)

LATEST = "LATEST"
META = "meta.json"


class CheckpointError(RuntimeError):
    """Checkpoints exist but none could be restored; the message says where and why."""


def _rng_state() -> dict:
    # Tensors, ints, strings and tuples only, so that loading needs no pickle (torch.load weights_only):
    # numpy's key array travels as a tensor.
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss))


def _load_rng(path: Path) -> None:
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:  # e.g. a checkpoint from before the format change: only the RNG is lost
        log.warning("RNG state not restored", extra={"file": str(path), "cause": str(exc)[:200]})
        return
    _set_rng_state(state)


def write_checkpoint(root: Path, model, optimizer, world: World, meta: dict) -> Path:
    """Write a complete checkpoint of meta['step'] in a new directory (all ranks); LATEST is not moved."""
    root = Path(root)
    name = broadcast(f"step-{meta['step']:09d}-{uuid.uuid4().hex[:8]}" if world.is_main else None, world)
    step_dir = root / name
    if world.is_main:
        root.mkdir(parents=True, exist_ok=True)
    barrier(world)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(step_dir))
    torch.save(_rng_state(), step_dir / f"rng-rank{world.rank}.pt")
    barrier(world)
    if world.is_main:
        fsync_tree(step_dir)
        write_atomically(step_dir / META, json.dumps({**meta, "world_size": world.size}, indent=1))
    barrier(world)
    return step_dir


def point_latest(root: Path, step_dir: Path, keep: int, fence_token: int | None = None) -> None:
    """Make LATEST name step_dir (durably), then delete what is no longer needed (rank 0)."""
    root = Path(root)
    fence_file.check(root, fence_token)  # a learner that lost the job must not move LATEST
    write_atomically(root / LATEST, step_dir.name)
    complete = _complete(root)
    keep_names = {p.name for p in complete[-keep:]} | {step_dir.name}
    for d in root.iterdir():
        if not d.is_dir() or not d.name.startswith("step-") or d.name in keep_names:
            continue
        # Incomplete ones are leftovers of a crashed write (only the lease holder writes here).
        shutil.rmtree(d, ignore_errors=True)


def _complete(root: Path) -> list[Path]:
    """Complete checkpoints (with meta.json), oldest step first."""
    found = []
    for d in Path(root).glob("step-*"):
        try:
            meta = json.loads((d / META).read_text())
            found.append((meta["step"], (d / META).stat().st_mtime, d))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return [d for *_, d in sorted(found)]


def _candidates(root: Path) -> list[Path]:
    """Checkpoints to try, best first: the one LATEST names, then the other complete ones, newest first."""
    root = Path(root)
    complete = _complete(root)
    named = None
    try:
        named = root / (root / LATEST).read_text().strip()
    except OSError:
        pass
    first = [named] if named is not None and named in complete else []
    if (root / LATEST).exists() and not first:
        log.warning("LATEST does not name a complete checkpoint; using the newest complete one",
                    extra={"dir": str(root), "latest": str(named.name if named else "")})  # fmt: skip
    return first + [d for d in reversed(complete) if d not in first]


def load_checkpoint(root: Path, model, optimizer, world: World) -> dict | None:
    """Restore the best loadable checkpoint into model and optimizer (all ranks); its meta, or None if
    the job never wrote one. CheckpointError if checkpoints existed and none loads."""
    root = Path(root)
    candidates = _candidates(root) if root.is_dir() else []
    # A LATEST means a checkpoint once completed; directories without one are torn first attempts.
    existed = (root / LATEST).exists()
    errors = []
    for step_dir in candidates:
        try:
            meta = json.loads((step_dir / META).read_text())
            model_sd, optim_sd = get_state_dict(model, optimizer)
            state = {"model": model_sd, "optim": optim_sd}
            dcp.load(state, storage_reader=IndexCheckedReader(step_dir))
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        # dcp wraps reader errors in CheckpointException, a BaseException.
        except (Exception, CheckpointException) as exc:  # a torn or corrupt checkpoint: the next one may load
            errors.append(f"{step_dir.name}: {type(exc).__name__}: {exc}")
            log.warning("checkpoint could not be loaded", extra={"dir": str(step_dir), "cause": str(exc)})
            continue
        rng = step_dir / f"rng-rank{world.rank}.pt"
        if rng.is_file() and meta.get("world_size") == world.size:
            _load_rng(rng)
        meta["dir"] = str(step_dir)
        return meta
    if existed:
        raise CheckpointError(
            f"{root} holds checkpoints but none can be restored ({'; '.join(errors) or 'none is complete'}); "
            "refusing to start the job over from its base model. Move the directory away to start over."
        )
    return None
