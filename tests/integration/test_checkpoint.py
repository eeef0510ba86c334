"""Learner checkpoints on disk, with real torch.distributed.checkpoint files: a rewrite killed midway, an
empty or dangling LATEST, and torn checkpoints never cost the job its progress or send it back to the
base model."""

from __future__ import annotations

import json

import pytest
import torch

from services.learner.checkpoint import (
    LATEST,
    META,
    CheckpointError,
    load_checkpoint,
    point_latest,
    write_checkpoint,
)
from services.learner.distributed import World

WORLD = World(0, 1, torch.device("cpu"))


def model_at(value: float):
    model = torch.nn.Linear(4, 4)
    with torch.no_grad():
        model.weight.fill_(value)
    return model, torch.optim.AdamW(model.parameters(), lr=0.1)


def save(root, step: int, value: float, point: bool = True):
    model, optim = model_at(value)
    d = write_checkpoint(root, model, optim, WORLD, {"step": step, "version": step})
    if point:
        point_latest(root, d, keep=2)
    return d


def restored(root) -> tuple[int, float]:
    model, optim = model_at(0.0)
    meta = load_checkpoint(root, model, optim, WORLD)
    return meta["step"], float(model.weight[0, 0])


def test_a_checkpoint_of_the_same_step_goes_to_a_new_directory(tmp_path):
    first = save(tmp_path, 10, 1.0)
    # The learner is stopped again right after resuming: the same step is checkpointed once more, and
    # the copy LATEST names is not touched until the new one is complete and named.
    second = save(tmp_path, 10, 2.0, point=False)
    assert first != second and (first / META).is_file()
    assert (tmp_path / LATEST).read_text() == first.name
    assert restored(tmp_path) == (10, 1.0)


def test_a_rewrite_killed_midway_leaves_the_previous_checkpoint(tmp_path):
    save(tmp_path, 5, 1.0)
    torn = save(tmp_path, 10, 2.0, point=False)
    (torn / META).unlink()  # killed before meta.json: shards on disk, the checkpoint incomplete
    assert restored(tmp_path) == (5, 1.0)
    # The next complete checkpoint clears the leftover away.
    save(tmp_path, 10, 3.0)
    assert not torn.exists() and restored(tmp_path) == (10, 3.0)


@pytest.mark.parametrize("latest", ["", "step-000000099-gone", "\x00\x00garbage"])
def test_an_empty_or_dangling_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path, latest):
    save(tmp_path, 5, 1.0)
    save(tmp_path, 10, 2.0)
    (tmp_path / LATEST).write_text(latest)
    assert restored(tmp_path) == (10, 2.0)


def test_a_corrupt_checkpoint_falls_back_to_the_one_before(tmp_path):
    save(tmp_path, 5, 1.0)
    newest = save(tmp_path, 10, 2.0)
    for f in newest.glob("*.distcp"):
        f.write_bytes(b"not a checkpoint")
    assert restored(tmp_path) == (5, 1.0)


def test_checkpoints_that_existed_but_cannot_load_stop_the_job_instead_of_restarting_it(tmp_path):
    d = save(tmp_path, 5, 1.0)
    (d / META).unlink()
    with pytest.raises(CheckpointError, match="refusing to start the job over"):
        restored(tmp_path)
    # A job that never completed a checkpoint (no LATEST ever written) starts from its base model.
    fresh = tmp_path / "fresh"
    save(fresh, 0, 1.0, point=False)
    (next(fresh.glob("step-*")) / META).unlink()
    model, optim = model_at(0.0)
    assert load_checkpoint(fresh, model, optim, WORLD) is None


def test_old_checkpoints_go_only_once_a_newer_one_is_named(tmp_path):
    dirs = [save(tmp_path, step, float(step)) for step in (5, 10, 15)]
    assert not dirs[0].exists() and dirs[1].exists() and dirs[2].exists()  # keep=2
    meta = json.loads((dirs[2] / META).read_text())
    assert meta["step"] == 15 and meta["world_size"] == 1


def test_the_rng_state_comes_back_from_a_file_read_without_pickle(tmp_path):
    import random

    import numpy as np

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save(tmp_path, 5, 1.0)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    assert restored(tmp_path)[0] == 5
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    rng_files = list(tmp_path.glob("step-*/rng-rank0.pt"))
    assert rng_files and torch.load(rng_files[0], weights_only=True)["numpy"][0] == "MT19937"


class _Planted:
    """What a hostile index could smuggle in: unpickling it runs a shell command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_an_index_that_names_anything_but_checkpoint_metadata_is_never_unpickled(tmp_path):
    import pickle

    root, marker = tmp_path / "ckpt", tmp_path / "code-ran"
    save(root, 1, 1.0)
    save(root, 2, 2.0)
    newest = max(root.glob("step-*"), key=lambda d: d.name)
    (newest / ".metadata").write_bytes(pickle.dumps(_Planted(marker)))
    # The planted index is refused like a torn checkpoint: the one before it is restored.
    assert restored(root) == (1, 1.0)
    assert not marker.exists(), "the checkpoint index was unpickled in full"
