"""summarize(): accuracy, throughput and staleness from step records."""

import pytest

from asympo.cli.report import summarize, write_report

JOB = {
    "job_id": "j",
    "state": "succeeded",
    "spec": {"algorithm": {"loss": "asympo", "max_staleness": 2, "steps": 2}},
}


def records():
    return [
        {"step": 0, "version": 0, "time": 100.0, "heldout_accuracy": 0.4},
        {"step": 1, "time": 102.0, "seconds": 2.0, "prompt_ids": ["a", "b"], "staleness": [0, 1],
         "responses": 16, "tokens": 100, "generated_tokens": 120, "reward_mean": 0.2, "tokens_per_s": 50.0,
         "dropped": {"stale": 0}},
        {"step": 2, "time": 104.0, "seconds": 2.0, "prompt_ids": ["c", "d"], "staleness": [2, 2],
         "responses": 16, "tokens": 100, "generated_tokens": 100, "reward_mean": 0.3, "tokens_per_s": 50.0,
         "heldout_accuracy": 0.6, "dropped": {"stale": 1}},
        {"final": True, "step": 2, "time": 104.5, "heldout_accuracy": 0.6},
    ]  # fmt: skip


def test_summary_figures():
    s = summarize(JOB, records(), [{"version": 0}, {"version": 1}, {"version": 2}])
    assert (s["initial_accuracy"], s["final_accuracy"], s["steps"]) == (0.4, 0.6, 2)
    assert s["wall_seconds"] == pytest.approx(4.0)
    assert s["samples_per_s"] == pytest.approx(8.0)
    assert s["tokens_per_s_trained"] == pytest.approx(50.0)
    assert s["tokens_per_s_generated"] == pytest.approx(55.0)
    assert s["staleness_histogram"] == {"0": 1, "1": 1, "2": 2}
    assert s["dropped"] == {"stale": 1} and s["newest_version"] == 2


def test_report_files(tmp_path):
    write_report(JOB, records(), [], tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"summary.json", "steps.json", "curves.png"}
