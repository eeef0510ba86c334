"""A finished (or running) job's report from its step records: curves PNG and summary.json.

Throughput is over the job's wall time from the base model's evaluation (step-0 record) to the last
step: samples/s = responses trained per second, tokens/s trained = response tokens trained per
second, tokens/s generated = response tokens of every group that reached the learner (trained or
dropped) per second.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from asympo.jobs.values import json_safe, trailing_mean


def summarize(job: dict, records: list[dict], versions: list[dict] | None = None) -> dict[str, Any]:
    """The summary of a job: accuracy before and after, throughput, staleness, drops."""
    steps = [r for r in records if r.get("prompt_ids") is not None and not r.get("final")]
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
        "dropped": steps[-1].get("dropped") if steps else {},
        "versions_published": len(versions) if versions is not None else None,
        "newest_version": versions[-1]["version"] if versions else None,
    }


def plot(summary: dict, records: list[dict], path: Path) -> None:
    """Reward and held-out accuracy, trained tokens/s, and the staleness histogram, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in records if r.get("prompt_ids") is not None and not r.get("final")]
    x = [r["step"] for r in steps]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].plot(
        x, trailing_mean([r.get("reward_mean") for r in steps]), label="training reward (10-step mean)"
    )
    evals = summary["accuracy_curve"]
    axes[0].plot([s for s, _ in evals], [a for _, a in evals], marker="o", label="held-out greedy accuracy")
    axes[0].set(xlabel="step", ylim=(0, 1), title="reward and accuracy")
    axes[0].legend(fontsize=8)
    axes[1].plot(x, trailing_mean([r.get("tokens_per_s") for r in steps]), label="trained tokens/s per step")
    axes[1].set(xlabel="step", title="learner throughput (10-step mean)")
    hist = summary["staleness_histogram"]
    axes[2].bar([int(k) for k in hist], list(hist.values()))
    axes[2].set(xlabel="version_now − gen_version_start", ylabel="groups trained", title="staleness")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"{summary['job_id']}: {summary['loss']}, max_staleness {summary['max_staleness']}, "
        f"{summary['steps']} steps, {(summary['samples_per_s'] or 0):.0f} samples/s"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(job: dict, records: list[dict], versions: list[dict], out_dir: Path) -> dict:
    """Write out_dir/summary.json, steps.json and curves.png; returns the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(job, records, versions)
    (out_dir / "summary.json").write_text(json.dumps(json_safe(summary), indent=1))
    (out_dir / "steps.json").write_text(json.dumps(records))
    if any(r.get("prompt_ids") is not None for r in records):
        plot(summary, records, out_dir / "curves.png")
    return summary
