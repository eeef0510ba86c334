"""A job's summary from its step records: accuracy before and after, throughput, staleness, drops.

Throughput is over the job's wall time from the base model's evaluation (step-0 record) to the last
step: samples/s = responses trained per second, tokens/s trained = response tokens trained per
second, tokens/s generated = response tokens of every group that reached the learner (trained or
dropped) per second. Pure: the learner stores it with a finished job, `asympo report` writes it out.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Any

from asympo.jobs.timeline import phase_medians


def summarize(job: dict, records: list[dict], versions: list[dict] | None = None) -> dict[str, Any]:
    """The summary of a job: accuracy before and after, throughput, staleness, drops."""
    steps = [r for r in records if r.get("prompt_ids") is not None and not r.get("final")]
    final = next((r for r in reversed(records) if r.get("final")), {})
    # Evaluations on the pods arrive as their own records, after the steps that follow them: order by step.
    evals = sorted(
        {r["step"]: r["heldout_accuracy"] for r in records if r.get("heldout_accuracy") is not None}.items()
    )
    sampled = [r for r in records if r.get("eval_samples")]
    start = next((r["time"] for r in records if r.get("step") == 0), steps[0]["time"] - steps[0]["seconds"]
                 if steps else None)  # fmt: skip
    wall = (steps[-1]["time"] - start) if steps and start else None
    responses = sum(r.get("responses", 0) for r in steps)
    tokens = sum(r.get("tokens", 0) for r in steps)
    generated = sum(r.get("generated_tokens", 0) for r in steps)
    staleness = Counter(s for r in steps for s in r.get("staleness", []))
    spec = job.get("spec", {})
    algo = spec.get("algorithm", {})
    per_s = (lambda n: n / wall) if wall else (lambda n: None)  # noqa: E731
    return {
        "job_id": job.get("job_id"),
        "state": job.get("state"),
        "loss": algo.get("loss"),
        "max_staleness": algo.get("max_staleness"),
        "steps": steps[-1]["step"] if steps else 0,
        "steps_planned": algo.get("steps"),
        "initial_accuracy": evals[0][1] if evals and evals[0][0] == 0 else None,
        "final_accuracy": evals[-1][1] if evals else None,
        "accuracy_curve": evals,
        "heldout_mean_at_k": (
            {
                "k": sampled[-1]["eval_samples"],
                "step": sampled[-1]["step"],
                "value": sampled[-1][f"heldout_mean_at_{sampled[-1]['eval_samples']}"],
            }
            if sampled
            else None
        ),  # fmt: skip
        "wall_seconds": wall,
        "samples_per_s": per_s(responses),
        "tokens_per_s_generated": per_s(generated),
        "tokens_per_s_trained": per_s(tokens),
        "responses_trained": responses,
        "tokens_trained": tokens,
        "tokens_generated": generated,
        "staleness_histogram": {str(k): v for k, v in sorted(staleness.items())},
        "dropped": final.get("flow", {}).get("dropped") or (steps[-1].get("dropped") if steps else {}),
        "timeline_medians": phase_medians(steps),
        "update_gauges": update_gauge_medians(steps),
        "rolled_back_steps": sum(len(r.get("superseded_steps", [])) for r in records if r.get("rollback")),
        "versions_published": len(versions) if versions is not None else None,
        "newest_version": versions[-1]["version"] if versions else None,
    }


def update_gauge_medians(steps: list[dict]) -> dict[str, Any] | None:
    """Medians over the steps that computed the update gauges (None if none did): neg_share, the gradient
    norms of the A<0 and A>0 parts and their ratio ‖g⁻‖/‖g⁺‖."""
    gauged = [r for r in steps if _finite(r.get("neg_share")) and _finite(r.get("grad_norm_neg"))
              and _finite(r.get("grad_norm_pos")) and r["grad_norm_pos"] > 0]  # fmt: skip
    if not gauged:
        return None
    return {
        "steps": len(gauged),
        "neg_share": statistics.median(r["neg_share"] for r in gauged),
        "grad_norm_neg": statistics.median(r["grad_norm_neg"] for r in gauged),
        "grad_norm_pos": statistics.median(r["grad_norm_pos"] for r in gauged),
        "grad_norm_ratio": statistics.median(r["grad_norm_neg"] / r["grad_norm_pos"] for r in gauged),
    }


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
