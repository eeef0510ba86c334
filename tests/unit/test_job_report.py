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


def test_update_gauges_are_summarized_and_plotted(tmp_path):
    steps = records()
    assert summarize(JOB, steps)["update_gauges"] is None  # no step computed them
    steps[1].update(neg_share=0.3, grad_norm_neg=1.0, grad_norm_pos=2.0)
    steps[2].update(neg_share=0.5, grad_norm_neg=3.0, grad_norm_pos=2.0)
    gauges = summarize(JOB, steps)["update_gauges"]
    assert gauges == pytest.approx(
        {"steps": 2, "neg_share": 0.4, "grad_norm_neg": 2.0, "grad_norm_pos": 2.0, "grad_norm_ratio": 1.0}
    )
    write_report(JOB, steps, [], tmp_path)
    plain = tmp_path / "plain"
    write_report(JOB, records(), [], plain)
    # The gauges get a fifth panel: a wider figure.
    assert _png_width(tmp_path / "curves.png") > _png_width(plain / "curves.png")


def _png_width(path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")


def test_timeline_medians_split_critical_path_background_and_pods():
    def step(i, train, wait, save):
        return {"step": i, "time": 100.0 + i, "seconds": wait + train + 0.01, "prompt_ids": ["p"],
                "timeline": {"learner": {"wait_groups": wait, "train": train, "save": save, "announce": 0.001},
                             "pods": {"generate": 0.05 * i, "score": 0.01}}}  # fmt: skip

    # Step 1 also waited for the pods' engines to start: it is left out of the steady state.
    steps = [
        step(1, 0.5, 9.0, 0.2),
        step(2, 0.1, 0.0, 0.02),
        step(3, 0.2, 0.02, 0.04),
        step(4, 0.3, 0.01, 0.03),
    ]
    medians = summarize(JOB, steps)["timeline_medians"]
    assert medians["critical"]["train"] == pytest.approx(0.2)
    assert medians["critical"]["wait_groups"] == pytest.approx(0.01)
    assert medians["critical"]["other"] == pytest.approx(0.23 - 0.2 - 0.01)  # median seconds minus phases
    assert medians["background"] == pytest.approx({"save": 0.03, "announce": 0.001})
    assert medians["pods"] == pytest.approx({"generate": 0.15, "score": 0.01})
