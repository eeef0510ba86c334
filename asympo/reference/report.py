"""What a reference run leaves behind: a JSON log, a learning-curve PNG, and comparison tables."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from asympo.jobs.values import json_safe, trailing_mean
from asympo.reference.loop import RunResult


def write_json(path: Path, data: Any) -> None:
    """Write strict JSON atomically (temp file + rename), so a reader never sees half a log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(json_safe(data), fh, indent=1, allow_nan=False)
    os.replace(tmp, path)


def run_log(result: RunResult) -> dict[str, Any]:
    """The JSON log of one run: spec, summary, evaluations and per-step records."""
    return {
        "summary": result.summary() if result.evals else {},
        "model_path": result.model_path,
        "spec": result.spec.model_dump(mode="json"),
        "evals": result.evals,
        "steps": result.steps,
    }


def _mean(rows: list[list[float]]) -> list[float]:
    return [sum(col) / len(col) for col in zip(*rows)]


def group_by_setting(results: list[RunResult]) -> dict[tuple[str, int], list[RunResult]]:
    """Runs keyed by (loss, max_staleness), seeds together, in first-seen order."""
    groups: dict[tuple[str, int], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.spec.algorithm.loss, r.spec.algorithm.max_staleness), []).append(r)
    return groups


def plot_runs(results: list[RunResult], path: Path, title: str) -> None:
    """Held-out accuracy, training reward and balance ratio R against step; one line per setting (seed mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for (loss, k), runs in group_by_setting(results).items():
        label = f"{loss}-k{k}" + (f" (mean of {len(runs)} seeds)" if len(runs) > 1 else "")
        style = "-" if k == max(r.spec.algorithm.max_staleness for r in results) else "--"
        eval_steps = [e["step"] for e in runs[0].evals]
        acc = _mean([[e["accuracy"] for e in r.evals] for r in runs])
        line = axes[0].plot(eval_steps, acc, style, marker=".", label=label)
        color = line[0].get_color()
        steps = [s["step"] + 1 for s in runs[0].steps]
        reward = _mean([trailing_mean([s["reward_mean"] for s in r.steps]) for r in runs])
        axes[1].plot(steps, reward, style, color=color, label=label)
        ratio = [
            trailing_mean([s["R"] if math.isfinite(s.get("R", math.nan)) else 1.0 for s in r.steps])
            for r in runs
        ]
        axes[2].plot(steps, _mean(ratio), style, color=color, label=label)
    axes[0].set(title="held-out greedy accuracy", xlabel="step", ylim=(0, 1))
    axes[1].set(title="training reward (10-step mean)", xlabel="step", ylim=(0, 1))
    axes[2].set(title="balance ratio R (10-step mean)", xlabel="step")
    axes[2].axhline(1.0, color="grey", lw=0.8, ls="--")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def aggregate(results: list[RunResult]) -> list[dict[str, Any]]:
    """Per (loss, max_staleness): mean initial/final accuracy and gain over seeds, with each seed's gain."""
    out = []
    for (loss, k), runs in group_by_setting(results).items():
        sums = [r.summary() for r in runs]
        n = len(sums)
        out.append(
            {
                "loss": loss,
                "max_staleness": k,
                "seeds": [s["seed"] for s in sums],
                "initial_accuracy": sum(s["initial_accuracy"] for s in sums) / n,
                "final_accuracy": sum(s["final_accuracy"] for s in sums) / n,
                "accuracy_gain": sum(s["accuracy_gain"] for s in sums) / n,
                "gains": [s["accuracy_gain"] for s in sums],
                "final_reward_mean": sum(s["final_reward_mean"] for s in sums) / n,
            }
        )
    return out


def summary_table(results: list[RunResult]) -> str:
    """A Markdown table per (loss, staleness): accuracies averaged over seeds, each seed's gain listed."""
    rows = [
        "| loss | staleness | seeds | initial acc | final acc | gain (pts) | gain per seed | final reward |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in aggregate(results):
        per_seed = ", ".join(f"{100 * g:+.1f}" for g in a["gains"])
        rows.append(
            f"| {a['loss']} | {a['max_staleness']} | {len(a['seeds'])} | {a['initial_accuracy']:.3f} | "
            f"{a['final_accuracy']:.3f} | {100 * a['accuracy_gain']:+.1f} | {per_seed} | "
            f"{a['final_reward_mean']:.3f} |"
        )
    return "\n".join(rows)
