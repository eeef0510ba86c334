"""Following a job from the command line: the live progress bar, and writing its report over REST."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from asympo.cli.client import GatewayClient
from asympo.jobs.records import FINAL_STATES


def write_job_report(c: GatewayClient, job_id: str, out: Path) -> dict:
    """Fetch a job's records over REST and write its report."""
    from asympo.cli.report import write_report

    job = c.job(job_id)
    return write_report(job, c.metrics(job_id, last=1_000_000), c.versions(job_id), out)


def watch_job(c: GatewayClient, job_id: str, poll_s: float = 1.0) -> dict:
    """A progress bar with reward, accuracy, throughput, pod versions and staleness; returns the final job."""
    from tqdm import tqdm

    job = c.job(job_id)
    tty = sys.stderr.isatty()
    # Without a terminal (CI, a log file) a line every 10 s instead of a redrawn bar.
    bar = tqdm(
        total=job["spec"]["algorithm"]["steps"], desc=job_id, unit="step", dynamic_ncols=True, disable=not tty
    )
    accuracy, last_line, last = None, 0.0, {}
    try:
        while True:
            job = c.job(job_id)
            record = job.get("last_step") or {}
            evaluated = job.get("last_eval") or record
            if evaluated.get("heldout_accuracy") is not None:
                accuracy = evaluated["heldout_accuracy"]
            if record.get("prompt_ids") is not None:
                last = record  # a training step (not the step-0 evaluation or the final record)
            bar.n = job["step"]
            served = sorted(
                {p["served_version"] for p in c.pods(job_id) if p.get("served_version") is not None}
            )
            line = (
                f"{job['state']} v{job['version']} reward {last.get('reward_mean', 0) or 0:.2f} "
                f"acc {accuracy if accuracy is not None else float('nan'):.3f} "
                f"tok/s {last.get('tokens_per_s', 0) or 0:.0f} pods@v{served} "
                f"stale≤{max(last.get('staleness') or [0])}"
            )
            bar.set_postfix_str(line)
            bar.refresh()
            if not tty and (time.monotonic() - last_line >= 10 or job["state"] in FINAL_STATES):
                last_line = time.monotonic()
                typer.echo(f"{job_id} step {job['step']}/{bar.total} {line}", err=True)
            if job["state"] in FINAL_STATES:
                return job
            time.sleep(poll_s)
    except KeyboardInterrupt:
        typer.echo(f"\nstopped watching; the job goes on (asympo watch {job_id})", err=True)
        return job
    finally:
        bar.close()
