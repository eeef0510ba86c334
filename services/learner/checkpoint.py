"""Checkpoints: sharded model and optimizer (torch.distributed.checkpoint), RNG per rank, and job counters.

A checkpoint is complete once `LATEST` names it: every rank writes its shards and RNG, all ranks meet
at a barrier, and only then does rank 0 write meta.json and replace LATEST (temp file + rename). A
crash at any point leaves LATEST on the previous complete checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from .distributed import World, barrier

LATEST = "LATEST"


def _rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_checkpoint(root: Path, model, optimizer, world: World, meta: dict, keep: int = 2) -> Path:
    """Write a checkpoint of step meta['step'] under root and point LATEST at it; all ranks call this."""
    root = Path(root)
    step_dir = root / f"step-{meta['step']:09d}"
    if world.is_main and step_dir.exists():
        shutil.rmtree(step_dir)  # an incomplete earlier attempt at the same step
    barrier(world)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(step_dir))
    torch.save(_rng_state(), step_dir / f"rng-rank{world.rank}.pt")
    barrier(world)
    if world.is_main:
        (step_dir / "meta.json").write_text(json.dumps({**meta, "world_size": world.size}, indent=1))
        tmp = root / f".{LATEST}.tmp"
        tmp.write_text(step_dir.name)
        os.replace(tmp, root / LATEST)
        for old in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(world)
    return step_dir


def latest_checkpoint(root: Path) -> Path | None:
    """The directory LATEST names, if any."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    step_dir = Path(root) / pointer.read_text().strip()
    return step_dir if (step_dir / "meta.json").is_file() else None


def load_checkpoint(root: Path, model, optimizer, world: World) -> dict | None:
    """Restore the LATEST checkpoint into model and optimizer (all ranks); its meta, or None if there is none."""
    step_dir = latest_checkpoint(root)
    if step_dir is None:
        return None
    meta = json.loads((step_dir / "meta.json").read_text())
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(step_dir))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng = step_dir / f"rng-rank{world.rank}.pt"
    if rng.is_file() and meta.get("world_size") == world.size:
        _set_rng_state(torch.load(rng, weights_only=False))
    return meta
