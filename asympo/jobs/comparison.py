"""Runs of several settings side by side: held-out accuracy per (loss, staleness), averaged over seeds.

The same table and JSON serve the comparison through the services (`asympo compare`) and through the
single-process reference loop (`asympo compare --reference`, `asympo reference` with several settings).
Pure: runs come in as `ComparedRun`s built from job records or reference results.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from asympo.jobs.spec import JobSpec

# A seed "collapsed" when its final held-out accuracy ends this far below the warm start.
COLLAPSE_BELOW_START = 0.05


def grid_specs(
    base: JobSpec, losses: list[str] | None, stalenesses: list[int] | None, seeds: list[int] | None
) -> list[JobSpec]:
    """One spec per (loss, staleness, seed); a list left out keeps the base job's value. SpecError if invalid."""
    losses = losses or [base.algorithm.loss]
    stalenesses = stalenesses if stalenesses is not None else [base.algorithm.max_staleness]
    seeds = seeds or [base.seed]
    return [
        base.with_overrides({"algorithm.loss": loss, "algorithm.max_staleness": k, "seed": seed})
        for loss in losses
        for k in stalenesses
        for seed in seeds
    ]


@dataclass
class ComparedRun:
    """One run of one setting and seed: its evaluations, per-step curves and the staleness it trained at."""

    loss: str
    max_staleness: int
    seed: int
    evals: list[tuple[int, float]]  # (step, held-out accuracy); step 0 is the warm start
    rewards: list[tuple[int, float]] = field(default_factory=list)  # (step, mean training reward)
    balance: list[tuple[int, float]] = field(default_factory=list)  # (step, raw balance ratio R)
    neg_share: list[tuple[int, float]] = field(default_factory=list)  # (step, share of the update from A<0)
    staleness_histogram: dict[int, int] = field(default_factory=dict)  # staleness → groups trained
    job_id: str | None = None
    state: str = "succeeded"
    seconds: float | None = None
    records: list[dict] = field(default_factory=list)  # every step and evaluation record, as produced

    @property
    def label(self) -> str:
        """loss-k<staleness>-s<seed>."""
        return f"{self.loss}-k{self.max_staleness}-s{self.seed}"

    @property
    def initial_accuracy(self) -> float | None:
        """Held-out accuracy of the warm start (the step-0 evaluation)."""
        return self.evals[0][1] if self.evals and self.evals[0][0] == 0 else None

    @property
    def final_accuracy(self) -> float | None:
        """Held-out accuracy at the last evaluation."""
        return self.evals[-1][1] if self.evals else None

    @property
    def best_accuracy(self) -> float | None:
        """The best held-out accuracy of any evaluation after the warm start."""
        after = [a for s, a in self.evals if s > 0]
        return max(after) if after else None

    @property
    def gain(self) -> float | None:
        """Final minus initial held-out accuracy."""
        if self.initial_accuracy is None or self.final_accuracy is None:
            return None
        return self.final_accuracy - self.initial_accuracy

    @property
    def collapsed(self) -> bool:
        """Whether the run ended more than COLLAPSE_BELOW_START below its warm start."""
        return self.gain is not None and self.gain < -COLLAPSE_BELOW_START

    def summary(self) -> dict[str, Any]:
        """The headline figures of the run."""
        tail = [r for _, r in self.rewards[-20:]]
        hist = self.staleness_histogram
        groups = sum(hist.values())
        return {
            "label": self.label, "job_id": self.job_id, "state": self.state, "loss": self.loss, "max_staleness": self.max_staleness,
            "seed": self.seed, "initial_accuracy": self.initial_accuracy, "final_accuracy": self.final_accuracy,
            "best_accuracy": self.best_accuracy, "accuracy_gain": self.gain, "collapsed": self.collapsed,
            "final_reward_mean": sum(tail) / len(tail) if tail else None,
            "staleness_histogram": {str(k): v for k, v in sorted(hist.items())},
            "staleness_mean": sum(k * v for k, v in hist.items()) / groups if groups else None,
            "seconds": self.seconds,
        }  # fmt: skip


def run_from_job(job: dict, records: list[dict], seconds: float | None = None) -> ComparedRun:
    """A ComparedRun from a job's record and its step records (what the gateway serves)."""
    spec = job["spec"]
    steps = [r for r in records if r.get("prompt_ids") is not None and not r.get("final")]
    evals = sorted(
        {r["step"]: r["heldout_accuracy"] for r in records if r.get("heldout_accuracy") is not None}.items()
    )
    return ComparedRun(
        loss=spec["algorithm"]["loss"],
        max_staleness=spec["algorithm"]["max_staleness"],
        seed=spec["seed"],
        evals=evals,
        rewards=_curve(steps, "reward_mean"),
        balance=_curve(steps, "R"),
        neg_share=_curve(steps, "neg_share"),
        staleness_histogram=dict(sorted(Counter(s for r in steps for s in r.get("staleness", [])).items())),
        job_id=job.get("job_id"),
        state=job.get("state", "unknown"),
        seconds=seconds,
        records=records,
    )


def _curve(steps: list[dict], key: str, offset: int = 0) -> list[tuple[int, float]]:
    return [
        (r["step"] + offset, float(r[key]))
        for r in steps
        if isinstance(r.get(key), int | float) and math.isfinite(r[key])
    ]


def by_setting(runs: list[ComparedRun]) -> dict[tuple[str, int], list[ComparedRun]]:
    """Runs keyed by (loss, max_staleness), seeds together, in first-seen order."""
    groups: dict[tuple[str, int], list[ComparedRun]] = {}
    for r in runs:
        groups.setdefault((r.loss, r.max_staleness), []).append(r)
    return groups


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def aggregate(runs: list[ComparedRun]) -> list[dict[str, Any]]:
    """Per (loss, max_staleness): seed means of the accuracies and gain, each seed's gain, collapsed seeds.

    Only runs that succeeded count: a failed or cancelled run's last evaluation is no final accuracy
    (its seed is listed under `not_succeeded`; the runs table keeps it)."""
    out = []
    for (loss, k), group in by_setting(runs).items():
        sums = [r.summary() for r in group if r.state == "succeeded"]
        out.append(
            {
                "loss": loss,
                "max_staleness": k,
                "seeds": [s["seed"] for s in sums],
                "not_succeeded": [r.seed for r in group if r.state != "succeeded"],
                "initial_accuracy": _mean([s["initial_accuracy"] for s in sums]),
                "final_accuracy": _mean([s["final_accuracy"] for s in sums]),
                "best_accuracy": _mean([s["best_accuracy"] for s in sums]),
                "accuracy_gain": _mean([s["accuracy_gain"] for s in sums]),
                "gains": [s["accuracy_gain"] for s in sums],
                "collapsed": sum(s["collapsed"] for s in sums),
                "staleness_mean": _mean([s["staleness_mean"] for s in sums]),
                "final_reward_mean": _mean([s["final_reward_mean"] for s in sums]),
            }
        )
    return out


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _pts(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f}"


def comparison_table(runs: list[ComparedRun]) -> str:
    """The Markdown table: per setting, seed means of initial, final and best accuracy, gain, and collapses."""
    rows = [
        "| loss | max staleness | trained staleness (mean) | seeds | initial acc | final acc | best acc "
        "| gain (pts) | gain per seed | collapsed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in aggregate(runs):
        per_seed = ", ".join(_pts(g) for g in a["gains"])
        mark = f"**{a['collapsed']}/{len(a['seeds'])}**" if a["collapsed"] else "0"
        stale = "–" if a["staleness_mean"] is None else f"{a['staleness_mean']:.2f}"
        seeds = str(len(a["seeds"])) + (f" (+{len(a['not_succeeded'])} failed)" if a["not_succeeded"] else "")
        rows.append(
            f"| {a['loss']} | {a['max_staleness']} | {stale} | {seeds} | {_pct(a['initial_accuracy'])} | "
            f"{_pct(a['final_accuracy'])} | {_pct(a['best_accuracy'])} | {_pts(a['accuracy_gain'])} | {per_seed} | "
            f"{mark} |"
        )
    return "\n".join(rows)


def runs_table(runs: list[ComparedRun]) -> str:
    """The Markdown table of every run: its job, accuracies and the staleness of the groups it trained on."""
    rows = ["| run | job | state | initial | final | best | staleness histogram (staleness: groups) | seconds |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in runs:
        hist = ", ".join(f"{k}: {v}" for k, v in sorted(r.staleness_histogram.items())) or "–"
        secs = "–" if r.seconds is None else f"{r.seconds:.0f}"
        rows.append(
            f"| {r.label} | {r.job_id or '–'} | {r.state} | {_pct(r.initial_accuracy)} | {_pct(r.final_accuracy)} | "
            f"{_pct(r.best_accuracy)} | {hist} | {secs} |"
        )
    return "\n".join(rows)


def comparison_markdown(runs: list[ComparedRun], title: str, command: str | None = None) -> str:
    """compare.md: the settings table, a note on what the columns mean, and the per-run table."""
    parts = [f"# {title}", ""]
    if command:
        parts += ["```", command, "```", ""]
    parts += [
        comparison_table(runs),
        "",
        "Accuracies are held-out greedy accuracy, averaged over the seeds whose run succeeded (a failed or "
        "cancelled run is counted beside the seeds and listed below); *best* is each seed's best evaluation "
        "after the warm start, averaged; *collapsed* counts seeds that ended more than "
        f"{100 * COLLAPSE_BELOW_START:.0f} points below their warm start. *Trained staleness* is the mean "
        "staleness (version trained − version that generated the group) of the groups actually trained.",
        "",
        "## Runs",
        "",
        runs_table(runs),
    ]
    return "\n".join(parts) + "\n"


# Left out of compare.json's step records: where each step's time went (the job's own report has it).
_TIMING_KEYS = ("timeline",)


def _lean(value: Any) -> Any:
    """A record for compare.json: timing breakdowns dropped, floats to 6 significant digits."""
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: _lean(v) for k, v in value.items() if k not in _TIMING_KEYS}
    if isinstance(value, list):
        return [_lean(v) for v in value]
    return value


def comparison_json(runs: list[ComparedRun], source: str, base_spec: dict | None = None) -> dict[str, Any]:
    """compare.json: the settings, each run's summary, evaluations and per-step records (lean)."""
    return {
        "source": source,
        "base_spec": base_spec,
        "settings": aggregate(runs),
        "runs": [{**r.summary(), "evals": r.evals, "records": _lean(r.records)} for r in runs],
    }
