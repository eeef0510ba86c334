"""What a comparison leaves in its directory: compare.json, compare.md and compare.png (seed means per setting)."""

from __future__ import annotations

import json
from pathlib import Path

from asympo.jobs.comparison import ComparedRun, by_setting, comparison_json, comparison_markdown
from asympo.jobs.values import json_safe, trailing_mean
from asympo.runtime.durable import write_atomically


def write_json(path: Path, data, compact: bool = False) -> None:
    """Write strict JSON (non-finite numbers as null) atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    layout = {"separators": (",", ":")} if compact else {"indent": 1}
    write_atomically(path, json.dumps(json_safe(data), allow_nan=False, **layout))


def save_comparison(
    runs: list[ComparedRun],
    out: Path,
    *,
    source: str,
    title: str,
    command: str | None = None,
    base_spec: dict | None = None,
    extra: dict | None = None,
) -> str:
    """Write out/compare.json (with `extra` at its top level), compare.md and compare.png; returns the Markdown."""
    # Compact: thousands of step records; compare.md is the file for reading.
    write_json(
        out / "compare.json", {**comparison_json(runs, source, base_spec), **(extra or {})}, compact=True
    )
    markdown = comparison_markdown(runs, title, command)
    (out / "compare.md").write_text(markdown)
    plot_comparison(runs, out / "compare.png", title)
    return markdown


def _seed_mean(curves: list[list[tuple[int, float]]], smooth: bool) -> tuple[list[int], list[float]]:
    """The mean over seeds at the steps every seed has (each seed's curve smoothed first if asked)."""
    curves = [c for c in curves if c]
    if not curves:
        return [], []
    series = []
    for c in curves:
        values = trailing_mean([v for _, v in c]) if smooth else [v for _, v in c]
        series.append(dict(zip((s for s, _ in c), values)))
    steps = sorted(set.intersection(*(set(s) for s in series)))
    return steps, [sum(s[t] for s in series) / len(series) for t in steps]


def plot_comparison(runs: list[ComparedRun], path: Path, title: str) -> None:
    """Accuracy, reward, balance ratio R, neg_share, trained staleness and per-seed final accuracy."""
    # A run that stopped early would cut its setting's seed mean short: plot the succeeded ones.
    runs = [r for r in runs if r.state == "succeeded"] or runs
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    acc_ax, reward_ax, r_ax, share_ax, stale_ax, final_ax = axes.flat
    settings = by_setting(runs)
    top_k = max(r.max_staleness for r in runs)
    width = 0.8 / max(1, len(settings))
    for i, ((loss, k), group) in enumerate(settings.items()):
        label = f"{loss}-k{k}" + (f" ({len(group)} seeds)" if len(group) > 1 else "")
        style = "-" if k == top_k else "--"
        line = acc_ax.plot(*_seed_mean([r.evals for r in group], False), style, marker=".", label=label)
        color = line[0].get_color()
        reward_ax.plot(*_seed_mean([r.rewards for r in group], True), style, color=color)
        r_ax.plot(*_seed_mean([r.balance for r in group], True), style, color=color)
        share_ax.plot(*_seed_mean([r.neg_share for r in group], False), style, marker=".", color=color)
        hist: dict[int, int] = {}
        for r in group:
            for s, n in r.staleness_histogram.items():
                hist[s] = hist.get(s, 0) + n
        total = sum(hist.values()) or 1
        stale_ax.bar([s + (i - len(settings) / 2) * width for s in hist], [n / total for n in hist.values()],
                     width=width, color=color)  # fmt: skip
        finals = [r.final_accuracy for r in group if r.final_accuracy is not None]
        final_ax.scatter([i] * len(finals), finals, color=color)
        if finals:
            final_ax.hlines(sum(finals) / len(finals), i - 0.3, i + 0.3, color=color)
    if not any(r.neg_share for r in runs):
        share_ax.text(0.5, 0.5, "no gauge steps recorded\n(eval.gauges_every: 0)", ha="center", va="center",
                      transform=share_ax.transAxes, color="grey")  # fmt: skip
    start = [r.initial_accuracy for r in runs if r.initial_accuracy is not None]
    for ax in (acc_ax, final_ax):
        if start:
            ax.axhline(sum(start) / len(start), color="grey", lw=0.8, ls=":", label="warm start")
    acc_ax.set(title="held-out greedy accuracy (seed mean)", xlabel="step", ylim=(0, 1))
    reward_ax.set(title="training reward (10-step mean)", xlabel="step", ylim=(0, 1))
    r_ax.set(title="balance ratio R = Σ|A<0|S / ΣA>0 S (10-step mean)", xlabel="step")
    share_ax.set(title="neg_share: ⟨g⁻, g⟩ / ‖g‖² (gauge steps)", xlabel="step")
    stale_ax.set(title="staleness of the groups trained", xlabel="staleness", ylabel="fraction of groups")
    final_ax.set(title="final accuracy per seed (bar: mean)", ylim=(0, 1))
    final_ax.set_xticks(
        range(len(settings)), [f"{loss}-k{k}" for loss, k in settings], rotation=30, fontsize=8
    )
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
