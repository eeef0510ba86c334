"""The reference loop end to end: real tiny model, real sampling and real torch updates."""

import json
import math
import statistics
import subprocess
import sys

import pytest

from asympo.jobs.spec import JobSpec
from asympo.reference import run_reference

from ..conftest import EXAMPLE_JOB, REPO

pytestmark = pytest.mark.slow
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cli(*args, cache):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "asympo.reference",
            *map(str, args),
            "--cache-dir",
            str(cache),
            "--no-progress",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_run_writes_log_and_plot_and_samples_exactly_k_stale(tmp_path, tiny_cache, tiny_model_path):
    out = tmp_path / "run"
    proc = _cli(
        EXAMPLE_JOB, "--steps", 12, "--staleness", 2, "--set", "eval.every=4", "--out", out, cache=tiny_cache
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert str(out / "curve.png") in proc.stdout
    log = json.loads((out / "log.json").read_text())
    assert [e["step"] for e in log["evals"]] == [0, 4, 8, 12]
    assert [s["version_sampled"] for s in log["steps"]] == [max(0, t - 2) for t in range(12)]
    assert [s["staleness"] for s in log["steps"]] == [min(t, 2) for t in range(12)]
    trained = [s for s in log["steps"] if not s.get("skipped")]
    assert trained, "every step was skipped"
    for s in trained:
        assert {"delta", "R", "S_pos", "S_neg", "loss", "grad_norm", "reward_mean"} <= set(s)
        assert list(s["by_staleness"]) == [str(s["staleness"])]  # one staleness per step here
        assert s["by_staleness"][str(s["staleness"])]["delta"] == s["delta"]
    # The update gauges every eval.gauges_every (10) steps, and they measure: neither side is empty.
    gauged = [s for s in trained if "neg_share" in s]
    assert [s["step"] for s in gauged] == [t for t in (0, 10) if t in {s["step"] for s in trained}]
    for s in gauged:
        assert s["grad_norm_neg"] > 0 and s["grad_norm_pos"] > 0 and math.isfinite(s["neg_share"])
    assert log["summary"]["steps"] == 12 and log["spec"]["algorithm"]["max_staleness"] == 2
    assert (out / "curve.png").read_bytes()[:8] == PNG_MAGIC
    # One run is a comparison of one: the same files as a grid's, with its 12 steps.
    (run,) = json.loads((out / "compare.json").read_text())["runs"]
    assert run["label"] == "asympo-k2-s0" and len(run["records"]) == 12
    assert "| asympo | 2 |" in (out / "compare.md").read_text()


def test_cli_compare_mode_runs_every_combination(tmp_path, tiny_cache, tiny_model_path):
    out = tmp_path / "cmp"
    args = ("--loss", "grpo,gpg", "--staleness", 1, "--seeds", "0,1", "--steps", 3, "--out", out)
    proc = _cli(EXAMPLE_JOB, *args, cache=tiny_cache)
    assert proc.returncode == 0, proc.stderr[-2000:]
    compare = json.loads((out / "compare.json").read_text())
    assert [(r["loss"], r["seed"]) for r in compare["runs"]] == [
        ("grpo", 0),
        ("grpo", 1),
        ("gpg", 0),
        ("gpg", 1),
    ]
    assert [(a["loss"], a["seeds"]) for a in compare["settings"]] == [("grpo", [0, 1]), ("gpg", [0, 1])]
    for label in ("grpo-k1-s0", "grpo-k1-s1", "gpg-k1-s0", "gpg-k1-s1"):
        assert (out / label / "log.json").is_file()
    # Different seeds sample different problems.
    first = [json.loads((out / f"gpg-k1-s{s}" / "log.json").read_text())["steps"][0] for s in (0, 1)]
    assert first[0]["reward_mean"] != first[1]["reward_mean"] or first[0]["loss"] != first[1]["loss"]
    grpo_steps = json.loads((out / "grpo-k1-s0" / "log.json").read_text())["steps"]
    assert all("clip_frac" in s for s in grpo_steps if not s.get("skipped"))
    assert (out / "compare.png").read_bytes()[:8] == PNG_MAGIC
    md = (out / "compare.md").read_text()
    # Staleness 1 from the second step on: the trained groups' mean staleness over 3 steps is 2/3.
    assert "| grpo | 1 | 0.67 | 2 |" in md and "| grpo-k1-s0 | – | succeeded |" in md
    assert compare["source"] == "reference" and compare["runs"][0]["records"][2]["staleness"] == 1


def test_bad_cli_input_names_the_field(tmp_path, tiny_cache):
    proc = _cli(EXAMPLE_JOB, "--set", "algorithm.group_size=1", "--out", tmp_path, cache=tiny_cache)
    assert proc.returncode == 2
    assert "algorithm.group_size" in proc.stderr and "greater than or equal to 2" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_verifiers_outside_the_reference_loop_are_refused_before_training(tiny_cache):
    spec = JobSpec.load(EXAMPLE_JOB).with_overrides({"verifier": "math"})
    with pytest.raises(ValueError, match="verifier 'math' is not available in the reference loop"):
        run_reference(spec, cache_dir=tiny_cache, progress=False)


def test_asympo_learns_under_staleness(tiny_cache, tiny_model_path, example_spec):
    """ASymPO with k = 4 stale sampling raises held-out greedy accuracy within 100 steps."""
    spec = example_spec.with_overrides({"algorithm.steps": 100, "eval.every": 50})
    result = run_reference(spec, cache_dir=tiny_cache, progress=False)
    assert result.model_path == str(tiny_model_path)
    assert max(s["staleness"] for s in result.steps) == 4
    assert result.final_accuracy - result.initial_accuracy >= 0.15, result.evals
    assert all(abs(s["loss"]) < 1e-6 for s in result.steps if not s.get("skipped"))  # fact 1, in training


# The setting that tells the losses apart (docs/reference-loop.md, "Telling the losses apart"): the
# demo job (lr 3e-5, 200 steps) with samples 8 updates old. Evaluation only at the start and the end.
DISCRIMINATING = {"algorithm.max_staleness": 8, "algorithm.steps": 200, "eval.every": 200}


def test_at_staleness_8_naive_falls_below_its_warm_start_while_asympo_learns(tiny_cache, example_spec):
    """Over seeds 0-2 at max_staleness 8, naive ends below the warm start and ≥ 15 points below ASymPO."""
    final, initial = {}, set()
    for loss in ("asympo", "naive"):
        runs = [
            run_reference(
                example_spec.with_overrides({**DISCRIMINATING, "algorithm.loss": loss, "seed": seed}),
                cache_dir=tiny_cache,
                progress=False,
            )  # fmt: skip
            for seed in (0, 1, 2)
        ]
        assert {max(s["staleness"] for s in r.steps) for r in runs} == {8}
        final[loss] = statistics.fmean(r.final_accuracy for r in runs)
        initial |= {r.initial_accuracy for r in runs}
    (warm_start,) = initial  # every run starts from the same SFT model
    assert final["naive"] < warm_start, (warm_start, final)
    assert final["asympo"] - final["naive"] >= 0.15, final
    assert final["asympo"] - warm_start >= 0.15, (warm_start, final)
