"""What a reference run leaves behind: a JSON log, and the run as a ComparedRun for curves and tables."""

from __future__ import annotations

import math
from typing import Any

from asympo.jobs.comparison import ComparedRun
from asympo.reference.loop import RunResult


def run_log(result: RunResult) -> dict[str, Any]:
    """The JSON log of one run: spec, summary, evaluations and per-step records."""
    return {
        "summary": result.summary() if result.evals else {},
        "model_path": result.model_path,
        "spec": result.spec.model_dump(mode="json"),
        "evals": result.evals,
        "steps": result.steps,
    }


def compared_run(result: RunResult) -> ComparedRun:
    """A reference run as a ComparedRun (steps counted after their update, as the learner counts them)."""
    steps = [s for s in result.steps if not s.get("skipped")]
    groups = result.spec.algorithm.prompts_per_step
    hist: dict[int, int] = {}
    for s in steps:
        hist[s["staleness"]] = hist.get(s["staleness"], 0) + groups
    return ComparedRun(
        loss=result.spec.algorithm.loss,
        max_staleness=result.spec.algorithm.max_staleness,
        seed=result.spec.seed,
        evals=[(e["step"], e["accuracy"]) for e in result.evals],
        rewards=[(s["step"] + 1, s["reward_mean"]) for s in result.steps],
        balance=[(s["step"] + 1, s["R"]) for s in steps if math.isfinite(s.get("R", math.nan))],
        neg_share=[
            (s["step"] + 1, s["neg_share"]) for s in steps if math.isfinite(s.get("neg_share", math.nan))
        ],
        staleness_histogram=dict(sorted(hist.items())),
        seconds=round(result.seconds, 1),
        records=result.steps,
    )
