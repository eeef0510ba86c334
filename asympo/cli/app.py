"""The `asympo` command: the local stack (up, down, status, logs) and jobs over REST; runs.py and models.py
hold the demo, the reference loop, benchmarks and model import."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from asympo.cli import compare, runs
from asympo.cli.client import GatewayError
from asympo.cli.context import Ctx, fail, require_extra
from asympo.cli.cpu_pinning import parse_cpus
from asympo.cli.local_stack import SERVICES, LocalStack, StackError
from asympo.cli.models import models_app
from asympo.cli.watch import watch_job, write_job_report
from asympo.runtime.api_token import TOKEN_ENV

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Asynchronous RL post-training with ASymPO."
)


@app.callback()
def main(
    ctx: typer.Context,
    home: Path = typer.Option(
        Path(".asympo"), envvar="ASYMPO_HOME", help="local stack state: logs, pids, store"
    ),
    url: str = typer.Option(
        None, envvar="ASYMPO_GATEWAY_URL", help="gateway URL (default: the local stack's)"
    ),
    token: str = typer.Option(None, envvar=TOKEN_ENV, help="gateway bearer token"),
):
    """Global options."""
    ctx.obj = Ctx(home, url, token)


# ---- the local stack --------------------------------------------------------------------------------


@app.command()
def up(
    ctx: typer.Context,
    gateway_port: int = typer.Option(8000, help="gateway HTTP port"),
    rollout_pods: int = typer.Option(1, min=1, help="rollout pods to run"),
    engine: str = typer.Option("auto", help="rollout engine: auto (vLLM when installed), vllm or hf"),
    rollout_flag: list[str] = typer.Option(
        [], help="extra flag for the rollout pods, e.g. --rollout-flag=--claim-idle-s=5"
    ),
    cpus: list[str] = typer.Option(
        [],
        help="pin a service to CPUs, e.g. --cpus rollout=0 --cpus learner=1 (Linux; `rollout` = every pod)",
    ),
):
    """Start Redis and the services (only what is not running yet) and wait until they are healthy."""
    require_extra("up", "local", runs.LOCAL_STACK_MODULES)
    extra = {"rollout": [f for item in rollout_flag for f in item.split("=", 1)]}
    try:
        pinned = parse_cpus(cpus)
    except ValueError as exc:
        fail(str(exc))
    stack = ctx.obj.stack(
        gateway_port=gateway_port, rollout_pods=rollout_pods, engine=engine, extra_flags=extra, cpus=pinned
    )
    try:
        status = stack.up()
    except StackError as exc:
        fail(f"asympo up failed: {exc}\n(`asympo down` stops what did start)")
    _print_status(status, stack)


@app.command()
def down(
    ctx: typer.Context,
    purge: bool = typer.Option(
        False, "--purge", help="then remove the data (Redis, weights, checkpoints); logs and reports stay"
    ),
):
    """Stop every process `asympo up` started; its data stays for the next `up` unless --purge."""
    stack = ctx.obj.stack()
    stopped = stack.down()
    typer.echo(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    if purge:
        try:
            removed = stack.purge()
        except StackError as exc:
            fail(str(exc))
        typer.echo(f"removed: {', '.join(p.name for p in removed) if removed else 'no data was there'}")


@app.command()
def status(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="machine-readable")):
    """The local stack's processes, Redis URL and gateway, and the jobs."""
    stack = ctx.obj.stack()
    st = stack.status()
    if as_json:
        typer.echo(json.dumps(st, indent=1))
        return
    _print_status(st, stack)
    if any(p["running"] for n, p in st["processes"].items() if n == "gateway"):
        try:
            with ctx.obj.client() as c:
                for job in c.jobs()[-5:]:
                    typer.echo(
                        f"  job {job['job_id']}: {job['state']} step {job['step']} version {job['version']}"
                    )
        except GatewayError as exc:
            typer.echo(f"  gateway: {exc}")


def _print_status(st: dict, stack: LocalStack) -> None:
    typer.echo(f"redis:   {st['redis_url']}   (inspect: redis-cli -u {st['redis_url']})")
    typer.echo(f"gateway: {st['gateway_url']}   token in {stack.config.home / 'api-token'} or ${TOKEN_ENV}")
    typer.echo(f"logs:    {st['logs']}/<service>.log")
    for name, p in st["processes"].items():
        state = "running" if p["running"] else "NOT running"
        port = f" port {p['port']}" if p.get("port") else ""
        typer.echo(f"  {name:<12} {state} (pid {p['pid']}){port}")


@app.command()
def logs(
    ctx: typer.Context,
    service: str = typer.Argument(..., help=f"one of {', '.join(SERVICES)} (or rollout-N)"),
    lines: int = typer.Option(40, "-n", help="lines to show"),
    follow: bool = typer.Option(False, "-f", "--follow", help="keep printing new lines"),
):
    """Print a service's log."""
    path = ctx.obj.home / "logs" / f"{service}.log"
    if not path.is_file():
        fail(f"no log at {path}; known: {', '.join(p.stem for p in path.parent.glob('*.log')) or 'none'}")
    with open(path, errors="replace") as f:
        for line in f.readlines()[-lines:]:
            typer.echo(line, nl=False)
        while follow:
            line = f.readline()
            if line:
                typer.echo(line, nl=False)
            else:
                time.sleep(0.5)


# ---- jobs -------------------------------------------------------------------------------------------


@app.command()
def submit(
    ctx: typer.Context,
    job_file: Path = typer.Argument(..., exists=True, dir_okay=False, help="a job spec (YAML)"),
    set_: list[str] = typer.Option([], "--set", help="override a field, e.g. --set algorithm.steps=50"),
    watch_: bool = typer.Option(False, "--watch", help="show live progress until the job ends"),
):
    """Submit a job to the gateway."""
    from asympo.jobs.spec import JobSpec, SpecError

    try:
        spec = JobSpec.load(job_file)
        if set_:
            spec = spec.with_overrides(list(set_))
    except SpecError as exc:
        fail(str(exc), 2)
    with ctx.obj.client() as c:
        try:
            job = c.submit(spec.to_yaml())
        except GatewayError as exc:
            fail(str(exc))
        typer.echo(job["job_id"])
        if watch_:
            watch_job(c, job["job_id"])


@app.command()
def jobs(ctx: typer.Context):
    """List jobs."""
    with ctx.obj.client() as c:
        try:
            for job in c.jobs():
                typer.echo(
                    f"{job['job_id']:<40} {job['state']:<10} step {job['step']:<6} version {job['version']}"
                )
        except GatewayError as exc:
            fail(str(exc))


@app.command()
def watch(ctx: typer.Context, job_id: str):
    """Live progress of a job until it ends (Ctrl-C stops watching, not the job)."""
    with ctx.obj.client() as c:
        watch_job(c, job_id)


@app.command()
def control(
    ctx: typer.Context, job_id: str, action: str = typer.Argument(..., help="pause, resume or cancel")
):
    """Pause, resume or cancel a job."""
    if action not in ("pause", "resume", "cancel"):
        fail("action must be pause, resume or cancel", 2)
    with ctx.obj.client() as c:
        try:
            typer.echo(json.dumps(c.control(job_id, action)))
        except GatewayError as exc:
            fail(str(exc))


@app.command()
def report(ctx: typer.Context, job_id: str, out: Path = typer.Option(None, help="default: HOME/reports/JOB")):
    """Write a job's report (curves.png, summary.json) from the gateway's records."""
    with ctx.obj.client() as c:
        summary = write_job_report(c, job_id, out or ctx.obj.home / "reports" / job_id)
    typer.echo(json.dumps(summary, indent=1))


# ---- commands that live in their own modules --------------------------------------------------------

app.command()(runs.demo)
app.command()(runs.reference)
app.command()(compare.compare)
app.command()(runs.bench)
app.add_typer(models_app, name="models")


if __name__ == "__main__":
    app()
