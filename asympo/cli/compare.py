"""`asympo compare`: every combination of losses, staleness bounds and seeds, run as jobs on the running stack
(or in the single-process reference loop), then one table, JSON and plot side by side."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import typer

from asympo.cli.client import GatewayClient, GatewayError
from asympo.cli.context import comma_list, fail, require_extra
from asympo.jobs.records import FINAL_STATES

# How often the display may print a line when stderr is not a terminal (CI, a log file).
_LINE_EVERY_S = 10.0


def compare(
    ctx: typer.Context,
    job: Path = typer.Argument(..., exists=True, dir_okay=False, help="the base job spec YAML"),
    loss: str = typer.Option(None, help="comma list of losses, e.g. asympo,naive,gpg (default: the job's)"),
    staleness: str = typer.Option(
        None, help="comma list of max_staleness bounds, e.g. 0,4 (default: the job's)"
    ),
    seeds: str = typer.Option(
        None, help="comma list of job seeds; every setting runs each (default: the job's)"
    ),
    steps: int = typer.Option(None, help="override algorithm.steps"),
    set_: list[str] = typer.Option(
        [], "--set", metavar="KEY=VALUE", help="override any spec field (repeatable)"
    ),
    out: Path = typer.Option(Path("runs/compare"), help="where compare.json, compare.md and compare.png go"),
    reference: bool = typer.Option(
        False, "--reference", help="run the single-process reference loop instead"
    ),
    cache_dir: Path = typer.Option(None, help="--reference: tiny-model cache (default ~/.cache/asympo)"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
    poll_s: float = typer.Option(1.0, min=0.1, help="how often to ask the gateway"),
):
    """Run the paper's comparison: each (loss, staleness, seed) as a job on the running stack, one after another.

    Staleness through the stack is a bound (`algorithm.max_staleness`); what the pods actually produced is
    counted per run (its histogram is in compare.md and compare.json). Start the stack first (`asympo up`).
    """
    from asympo.jobs.comparison import grid_specs
    from asympo.jobs.spec import JobSpec, SpecError

    command = "asympo " + shlex.join(sys.argv[1:])
    try:
        base = JobSpec.load(job)
        overrides = [*set_, *([f"algorithm.steps={steps}"] if steps is not None else [])]
        base = base.with_overrides(overrides) if overrides else base
        specs = grid_specs(base, comma_list(str, loss), comma_list(int, staleness), comma_list(int, seeds))
    except SpecError as exc:
        fail(f"error: {exc}", 2)
    if reference:
        require_extra("compare --reference", "local", ("torch", "transformers", "matplotlib"))
        from transformers.utils import logging as hf_logging

        from asympo.reference.grid import run_grid

        hf_logging.disable_progress_bar()
        run_grid(specs, out, cache_dir, progress=not no_progress, say=typer.echo, command=command)
        return
    require_extra("compare", "local", ("matplotlib",))
    with ctx.obj.client() as c:
        if not c.healthy():
            fail(
                f"no asympo gateway answers at {c.url}: start the stack first (`asympo up`) or pass --url", 2
            )
        failed = _run_on_stack(c, base, specs, out, command, progress=not no_progress, poll_s=poll_s)
    if failed:
        raise typer.Exit(1)


def _named(spec, base_name: str):
    """The spec named after its setting, so the jobs list says which run is which."""
    a = spec.algorithm
    return spec.with_overrides(
        {"name": f"{base_name}-{a.loss}-k{a.max_staleness}-s{spec.seed}"[:63].rstrip("-")}
    )


def _run_on_stack(c: GatewayClient, base, specs, out: Path, command, progress: bool, poll_s: float) -> int:
    """Submit each spec in turn, follow it, and rewrite the comparison after each run; the failed-run count."""
    from tqdm import tqdm

    from asympo.jobs.comparison import run_from_job
    from asympo.jobs.comparison_files import save_comparison

    base_name = base.name or "compare"
    title = f"asympo compare through the stack: {base_name} ({len(specs)} runs)"
    runs, t_start = [], time.monotonic()
    tty = sys.stderr.isatty() and progress
    bar = tqdm(total=sum(s.algorithm.steps for s in specs), unit="step", dynamic_ncols=True, disable=not tty)
    done_steps, last_line, job_id = 0, 0.0, None
    try:
        for i, spec in enumerate(specs):
            spec = _named(spec, base_name)
            t0 = time.monotonic()
            job_id = c.submit(spec.to_yaml())["job_id"]
            while True:
                job = c.job(job_id)
                bar.n = done_steps + job["step"]
                acc = (job.get("last_eval") or {}).get("heldout_accuracy")
                line = f"run {i + 1}/{len(specs)} {spec.name}: {job['state']} step {job['step']}" + (
                    f" acc {acc:.3f}" if acc is not None else ""
                )
                bar.set_description_str(line)
                bar.refresh()
                if (
                    progress
                    and not tty
                    and (time.monotonic() - last_line >= _LINE_EVERY_S or job["state"] in FINAL_STATES)
                ):
                    last_line = time.monotonic()
                    typer.echo(f"[{time.monotonic() - t_start:5.0f} s] {line}", err=True)
                if job["state"] in FINAL_STATES:
                    break
                time.sleep(poll_s)
            done_steps += spec.algorithm.steps
            records = c.metrics(job_id, last=1_000_000)
            if records and not any(r.get("step") == 0 for r in records):
                typer.echo(f"\nwarning: {job_id}: the gateway sent only its newest {len(records)} records (its "
                           "metrics_limit), without the warm start's evaluation: raise ASYMPO_GATEWAY_METRICS_LIMIT", err=True)  # fmt: skip
            runs.append(run_from_job(job, records, time.monotonic() - t0))
            job_id = None
            save_comparison(runs, out, source="stack", title=title, command=command, base_spec=base.model_dump(mode="json"),
                            extra={"seconds_total": time.monotonic() - t_start})  # fmt: skip
    except KeyboardInterrupt:
        if job_id is not None:
            _cancel(c, job_id)
        bar.close()
        typer.echo(
            f"\ninterrupted after {len(runs)} of {len(specs)} runs; what finished is in {out}", err=True
        )
        raise typer.Exit(130) from None
    except GatewayError as exc:
        bar.close()
        fail(f"compare stopped: {exc}\n(finished runs: {len(runs)} of {len(specs)}, in {out})")
    bar.close()
    from asympo.jobs.comparison import comparison_table

    failed = [r for r in runs if r.state != "succeeded"]
    typer.echo(comparison_table(runs))
    typer.echo(
        f"\n{len(runs)} runs in {time.monotonic() - t_start:.0f} s"
        + (
            f"; {len(failed)} did not succeed: {', '.join(f'{r.label} ({r.state})' for r in failed)}"
            if failed
            else ""
        )
        + f"\ntable: {out / 'compare.md'}\nplot:  {out / 'compare.png'}\ndata:  {out / 'compare.json'}"
    )
    return len(failed)


def _cancel(c: GatewayClient, job_id: str) -> None:
    try:
        c.control(job_id, "cancel")
        typer.echo(f"\ncancelled {job_id}", err=True)
    except GatewayError as exc:
        typer.echo(
            f"\ncould not cancel {job_id} ({exc}); cancel it with `asympo control {job_id} cancel`", err=True
        )
