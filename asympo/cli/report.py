"""A finished (or running) job's report from its step records: curves PNG and summary.json (see
asympo.jobs.summary for what the summary holds)."""

from __future__ import annotations

import json
from pathlib import Path

from asympo.jobs.summary import summarize
from asympo.jobs.values import json_safe, trailing_mean

__all__ = ["plot", "summarize", "write_report"]


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
