"""Several reference runs side by side: every combination of losses, staleness bounds and seeds."""

from __future__ import annotations

from pathlib import Path

from asympo.jobs.comparison_files import plot_comparison, save_comparison, write_json
from asympo.jobs.spec import JobSpec
from asympo.reference.loop import RunResult, run_reference
from asympo.reference.report import compared_run, run_log


def run_grid(
    specs: list[JobSpec],
    out: Path,
    cache_dir: Path | None,
    progress: bool,
    say=print,
    command: str | None = None,
) -> list[RunResult]:
    """Run each spec (logs and a curve per run), then compare.json, compare.md and compare.png in `out`."""
    several_seeds = len({s.seed for s in specs}) > 1
    single = len(specs) == 1
    results: list[RunResult] = []
    for spec in specs:
        label = f"{spec.algorithm.loss}-k{spec.algorithm.max_staleness}"
        if several_seeds:
            label += f"-s{spec.seed}"
        run_out = out if single else out / label

        def save(result: RunResult, run_out: Path = run_out) -> None:
            write_json(run_out / "log.json", run_log(result))

        result = run_reference(spec, label=label, cache_dir=cache_dir, progress=progress, on_eval=save)
        result.out_dir = run_out
        save(result)
        plot_comparison([compared_run(result)], run_out / "curve.png", f"asympo reference loop: {label}")
        results.append(result)
        s = result.summary()
        say(
            f"{label}: held-out accuracy {s['initial_accuracy']:.1%} -> {s['final_accuracy']:.1%} "
            f"({100 * s['accuracy_gain']:+.1f} pts) in {s['steps']} steps, {s['seconds']:.0f} s"
        )
        say(f"  log:  {run_out / 'log.json'}\n  plot: {run_out / 'curve.png'}")
        # After every run, so an interrupted grid keeps what finished.
        table = save_comparison(
            [compared_run(r) for r in results], out, source="reference",
            title="asympo reference loop: comparison (same seeds)", command=command,
            base_spec=specs[0].model_dump(mode="json"),
        )  # fmt: skip
    if not single:
        say("\n" + table)
        say(f"comparison plot: {out / 'compare.png'}\ncomparison table: {out / 'compare.md'}")
    return results
