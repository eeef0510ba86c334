"""What a reference run leaves behind: a JSON log, a learning-curve PNG, and comparison tables."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from asympo.reference.loop import RunResult


def _finite(value: Any) -> Any:
    """JSON has no NaN or inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    """Write strict JSON atomically (temp file + rename), so a reader never sees half a log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(_finite(data), fh, indent=1, allow_nan=False)
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


def _smooth(values: list[float], window: int = 10) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_runs(results: list[RunResult], path: Path, title: str) -> None:
    """Held-out accuracy, training reward and the balance ratio R against step, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for r in results:
        line = axes[0].plot(
            [e["step"] for e in r.evals], [e["accuracy"] for e in r.evals], marker=".", label=r.label
        )
        color = line[0].get_color()
        steps = [s["step"] + 1 for s in r.steps]
        axes[1].plot(steps, _smooth([s["reward_mean"] for s in r.steps]), color=color, label=r.label)
        ratio = [s.get("R", math.nan) for s in r.steps]
        axes[2].plot(
            steps, _smooth([v if math.isfinite(v) else 1.0 for v in ratio]), color=color, label=r.label
        )
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


def summary_table(results: list[RunResult]) -> str:
    """A Markdown table of the runs' headline figures."""
    rows = [
        "| run | loss | staleness | initial acc | final acc | gain (pts) | best acc | final reward |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.summary()
        rows.append(
            f"| {s['label']} | {s['loss']} | {s['max_staleness']} | {s['initial_accuracy']:.3f} | "
            f"{s['final_accuracy']:.3f} | {100 * s['accuracy_gain']:+.1f} | {s['best_accuracy']:.3f} | "
            f"{s['final_reward_mean']:.3f} |"
        )
    return "\n".join(rows)
