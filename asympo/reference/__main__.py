"""python -m asympo.reference JOB.yaml [--loss L,...] [--staleness K,...] [--seeds S,...] [--set k=v] [--out DIR]

Runs the single-process reference loop. With several losses, staleness values or seeds it runs every
combination (the same seeds for every setting) and writes a comparison plot and table beside the
per-run logs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asympo.algo import METHODS
from asympo.jobs.spec import JobSpec, SpecError
from asympo.reference.loop import RunResult, run_reference
from asympo.reference.report import aggregate, plot_runs, run_log, summary_table, write_json


def _csv(kind, values: str) -> list:
    return [kind(v) for v in values.split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m asympo.reference", description=__doc__.split("\n\n")[1])
    p.add_argument("job", nargs="?", help="job spec YAML (default: the built-in tiny arithmetic job)")
    p.add_argument("--loss", type=lambda v: _csv(str, v), help=f"loss or comma list of: {', '.join(METHODS)}")
    p.add_argument("--staleness", type=lambda v: _csv(int, v), help="max_staleness or comma list")
    p.add_argument("--steps", type=int, help="override algorithm.steps")
    p.add_argument(
        "--seeds", type=lambda v: _csv(int, v), help="job seed or comma list (runs each setting per seed)"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any spec field, e.g. --set algorithm.lr=1e-4 (repeatable)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("runs/reference"), help="output directory")
    p.add_argument("--cache-dir", type=Path, default=None, help="tiny-model cache (default ~/.cache/asympo)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the requested reference runs and report where their logs and plots are."""
    args = parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars say what is happening; its weight-loading bar is noise
    try:
        base = JobSpec.load(args.job) if args.job else JobSpec()
        overrides = list(args.overrides)
        if args.steps is not None:
            overrides.append(f"algorithm.steps={args.steps}")
        base = base.with_overrides(overrides) if overrides else base
        losses = args.loss or [base.algorithm.loss]
        stalenesses = args.staleness if args.staleness is not None else [base.algorithm.max_staleness]
        seeds = args.seeds or [base.seed]
        specs = [
            base.with_overrides({"algorithm.loss": loss, "algorithm.max_staleness": k, "seed": seed})
            for loss in losses
            for k in stalenesses
            for seed in seeds
        ]
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    results: list[RunResult] = []
    single = len(specs) == 1
    for spec in specs:
        label = f"{spec.algorithm.loss}-k{spec.algorithm.max_staleness}"
        if len(seeds) > 1:
            label += f"-s{spec.seed}"
        out = args.out if single else args.out / label

        def save(result: RunResult, out: Path = out) -> None:
            write_json(out / "log.json", run_log(result))

        result = run_reference(
            spec, label=label, cache_dir=args.cache_dir, progress=not args.no_progress, on_eval=save
        )
        result.out_dir = out
        save(result)
        plot_runs([result], out / "curve.png", f"asympo reference loop: {label}")
        results.append(result)
        s = result.summary()
        print(
            f"{label}: held-out accuracy {s['initial_accuracy']:.1%} -> {s['final_accuracy']:.1%} "
            f"({100 * s['accuracy_gain']:+.1f} pts) in {s['steps']} steps, {s['seconds']:.0f} s"
        )
        print(f"  log:  {out / 'log.json'}\n  plot: {out / 'curve.png'}")

    if not single:
        write_json(
            args.out / "compare.json",
            {"runs": [r.summary() for r in results], "settings": aggregate(results)},
        )
        plot_runs(results, args.out / "compare.png", "asympo reference loop: comparison (same seeds)")
        table = summary_table(results)
        (args.out / "compare.md").write_text(table + "\n")
        print("\n" + table)
        print(f"\ncomparison plot: {args.out / 'compare.png'}\ncomparison table: {args.out / 'compare.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
