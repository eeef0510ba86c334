"""Pieces of the learner's background publication that need no Redis or process."""

import math

import torch

from services.learner.commits import _finite_copy
from services.learner.job_context import JobContext, Progress


def test_the_snapshot_is_a_copy_and_says_whether_it_is_finite():
    model = torch.nn.Linear(3, 2)
    state, finite = _finite_copy(model)
    assert finite and state.keys() == model.state_dict().keys()
    with torch.no_grad():
        model.weight.add_(1.0)  # training goes on while the copy is written out
    assert not torch.equal(state["weight"], model.weight)
    with torch.no_grad():
        model.bias[0] = math.nan
    assert _finite_copy(model)[1] is False


def test_staleness_counts_the_version_being_published():
    ctx = JobContext.__new__(JobContext)  # only the counters matter here
    ctx.progress, ctx.unannounced = Progress(step=5, version=5), 0
    assert ctx.staleness(3) == 2
    # Step 6 trained and its version is being written: its weights are version 6 already.
    ctx.unannounced = 1
    assert ctx.staleness(3) == 3
