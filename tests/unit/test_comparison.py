"""The comparison table and JSON: runs built from job records, seed means, per-seed gains, collapses."""

from __future__ import annotations

import math

from asympo.jobs.comparison import (
    ComparedRun,
    aggregate,
    comparison_json,
    comparison_markdown,
    comparison_table,
    grid_specs,
    run_from_job,
)
from asympo.jobs.spec import JobSpec


def _job(loss="naive", k=4, seed=1, state="succeeded"):
    return {"job_id": f"j-{loss}-{k}-{seed}", "state": state,
            "spec": {"seed": seed, "algorithm": {"loss": loss, "max_staleness": k}}}  # fmt: skip


def _records(final_acc: float, staleness=(4, 4, 3)):
    return [
        {"step": 0, "heldout_accuracy": 0.4},
        {
            "step": 1,
            "prompt_ids": ["a"],
            "staleness": list(staleness),
            "reward_mean": 0.2,
            "R": 2.0,
            "loss": 0.123456789,
            "timeline": {"learner": {"train": 0.1}},
        },
        {"step": 2, "prompt_ids": ["b"], "staleness": [4], "reward_mean": 0.3, "R": None, "neg_share": 0.4},
        # The pods' evaluation of step 2 arrives after the step's record; the final record is not a step.
        {"step": 2, "version": 2, "heldout_accuracy": final_acc},
        {"step": 1, "version": 1, "heldout_accuracy": 0.9},
        {"final": True, "step": 2, "prompt_ids": None, "heldout_accuracy": final_acc},
    ]


def test_a_run_from_job_records_counts_trained_staleness_and_orders_evaluations():
    run = run_from_job(_job(), _records(0.3))
    assert run.label == "naive-k4-s1" and run.job_id == "j-naive-4-1"
    assert run.evals == [(0, 0.4), (1, 0.9), (2, 0.3)]
    assert run.staleness_histogram == {3: 1, 4: 3}
    assert run.rewards == [(1, 0.2), (2, 0.3)]
    assert run.balance == [(1, 2.0)]  # a null R (no positive responses) is not a point
    assert run.neg_share == [(2, 0.4)]
    s = run.summary()
    assert (s["initial_accuracy"], s["final_accuracy"], s["best_accuracy"]) == (0.4, 0.3, 0.9)
    assert math.isclose(s["accuracy_gain"], -0.1) and s["collapsed"]
    assert math.isclose(s["staleness_mean"], 15 / 4)


def test_seed_means_per_setting_and_the_collapse_marker():
    runs = [
        run_from_job(_job("asympo", seed=0), _records(0.8)),
        run_from_job(_job("asympo", seed=1), _records(0.7)),
        run_from_job(_job("naive", seed=0), _records(0.2)),
        run_from_job(_job("naive", seed=1), _records(0.42)),
    ]
    by = {a["loss"]: a for a in aggregate(runs)}
    assert by["asympo"]["seeds"] == [0, 1] and math.isclose(by["asympo"]["final_accuracy"], 0.75)
    assert math.isclose(by["naive"]["accuracy_gain"], -0.09) and by["naive"]["collapsed"] == 1
    assert by["asympo"]["collapsed"] == 0
    table = comparison_table(runs)
    assert "| asympo | 4 | 3.75 | 2 | 0.400 | 0.750 | 0.900 | +35.0 | +40.0, +30.0 | 0 |" in table
    assert "| naive | 4 | 3.75 | 2 | 0.400 | 0.310 | 0.900 | -9.0 | -20.0, +2.0 | **1/2** |" in table
    md = comparison_markdown(runs, "t", "asympo compare x.yaml")
    assert "asympo compare x.yaml" in md and "| naive-k4-s1 | j-naive-4-1 | succeeded |" in md
    assert "3: 1, 4: 3" in md
    data = comparison_json(runs, "stack")
    assert data["source"] == "stack" and len(data["runs"]) == 4
    step = data["runs"][0]["records"][1]
    assert step["staleness"] == [4, 4, 3] and step["reward_mean"] == 0.2  # per-step records kept ...
    assert step["loss"] == 0.123457 and "timeline" not in step  # ... but lean: 6 digits, no timing breakdown


def test_a_run_without_evaluations_shows_dashes_not_errors():
    run = ComparedRun("gpg", 0, 2, evals=[], state="failed")
    assert run.gain is None and not run.collapsed
    assert "| gpg | 0 | – | 0 (+1 failed) | – | – | – | – |  | 0 |" in comparison_table([run])


def test_a_run_that_did_not_succeed_is_kept_out_of_the_means():
    runs = [
        run_from_job(_job("asympo", seed=0), _records(0.8)),
        run_from_job(_job("asympo", seed=1, state="cancelled"), _records(0.2)),  # stopped early, low
    ]
    (setting,) = aggregate(runs)
    assert setting["seeds"] == [0] and setting["not_succeeded"] == [1]
    assert setting["final_accuracy"] == 0.8 and setting["collapsed"] == 0
    assert "| asympo | 4 | 3.75 | 1 (+1 failed) | 0.400 | 0.800 |" in comparison_table(runs)
    assert "| asympo-k4-s1 | j-asympo-4-1 | cancelled |" in comparison_markdown(runs, "t")


def test_grid_specs_cover_every_combination_with_the_same_seeds():
    specs = grid_specs(JobSpec(), ["asympo", "naive"], [0, 4], [0, 1])
    assert [(s.algorithm.loss, s.algorithm.max_staleness, s.seed) for s in specs] == [
        (loss, k, seed) for loss in ("asympo", "naive") for k in (0, 4) for seed in (0, 1)
    ]
    assert [s.algorithm.loss for s in grid_specs(JobSpec(), None, None, None)] == ["asympo"]
