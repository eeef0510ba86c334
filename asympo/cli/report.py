"""A finished (or running) job's report from its step records: curves PNG and summary.json (see
asympo.jobs.summary for what the summary holds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from asympo.jobs.summary import summarize
from asympo.jobs.values import json_safe, trailing_mean

__all__ = ["plot", "summarize", "write_report"]


def plot(summary: dict, records: list[dict], path: Path) -> None:
    """Reward and held-out accuracy, trained tokens/s, the staleness histogram, where a step's time goes and,
    when steps computed them, the update gauges, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in records if r.get("prompt_ids") is not None and not r.get("final")]
    x = [r["step"] for r in steps]
    gauged = [r for r in steps if r.get("neg_share") is not None]
    fig, axes = plt.subplots(1, 5 if gauged else 4, figsize=(25 if gauged else 20, 4.2))
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
    _timeline(axes[3], summary.get("timeline_medians") or {})
    if gauged:
        _update_gauges(axes[4], gauged)
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


def _timeline(ax, medians: dict) -> None:
    """Stacked bars: the learner's critical path, its background publication, and a pod batch (median s)."""
    bars = [("learner\ncritical path", medians.get("critical", {})),
            ("learner\npublication", medians.get("background", {})),
            ("pods\nper group", medians.get("pods", {}))]  # fmt: skip
    for i, (_, phases) in enumerate(bars):
        bottom = 0.0
        for name, seconds in phases.items():
            ax.bar(i, seconds * 1000, bottom=bottom, width=0.6)
            if seconds * 1000 > 0.04 * max(1e-9, sum(phases.values()) * 1000):
                ax.text(i, bottom + seconds * 500, name, ha="center", va="center", fontsize=7)
            bottom += seconds * 1000
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax.set(ylabel="ms (median per step)", title="where a step's time goes")


def _update_gauges(ax, gauged: list[dict]) -> None:
    """neg_share and ‖g⁻‖/‖g⁺‖ against step, on the steps that computed them."""
    x = [r["step"] for r in gauged]
    ax.plot(x, [r["neg_share"] for r in gauged], marker=".", label="neg_share = ⟨g⁻, g⟩ / ‖g‖²")
    ratio = [r["grad_norm_neg"] / r["grad_norm_pos"] if r.get("grad_norm_pos") else None for r in gauged]
    ax.plot(x, [math.nan if v is None else v for v in ratio], marker=".", label="‖g⁻‖ / ‖g⁺‖")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="step", title="update gauges (A<0 responses' part of the update)")
    ax.legend(fontsize=8)


def write_report(job: dict, records: list[dict], versions: list[dict], out_dir: Path) -> dict:
    """Write out_dir/summary.json, steps.json and curves.png; returns the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(job, records, versions)
    (out_dir / "summary.json").write_text(json.dumps(json_safe(summary), indent=1))
    (out_dir / "steps.json").write_text(json.dumps(records))
    if any(r.get("prompt_ids") is not None for r in records):
        plot(summary, records, out_dir / "curves.png")
    return summary
