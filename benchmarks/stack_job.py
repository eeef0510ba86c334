"""One job through the real distributed stack: `asympo up` in a private home, submit over REST, wait, summarize.

Shared by the benchmarks that measure the whole system (benchmarks/real_model.py, benchmarks/peer_trl.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from asympo.cli.client import GatewayClient
from asympo.cli.cpu_pinning import SERVICES
from asympo.cli.local_stack import LocalStack, StackConfig
from asympo.cli.report import summarize
from asympo.jobs.records import FINAL_STATES
from asympo.jobs.spec import JobSpec
from asympo.runtime.api_token import TOKEN_ENV

REPO = Path(__file__).resolve().parents[1]


def stack_cpu(home: Path) -> dict[int, tuple[str, float]]:
    """Every process of the stack started in `home`: pid -> (part, CPU seconds, user + system).

    The services and their children carry the stack's ASYMPO_HOME; Redis does not, and is found by
    its pid file. A part is a service, `redis`, or `vllm engine` (the pod's engine process).
    """
    import psutil

    redis_pid = LocalStack(StackConfig(home=home)).running_pid("redis")
    out = {}
    for p in psutil.process_iter():
        try:
            if p.pid != redis_pid and p.environ().get("ASYMPO_HOME") != str(home):
                continue
            t = p.cpu_times()
            out[p.pid] = (_part(" ".join(p.cmdline()) or p.name()), t.user + t.system)
        except psutil.Error:  # gone meanwhile, or not ours to read
            continue
    return out


def cpu_used(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each part used between two stack_cpu snapshots (a process started meanwhile counts whole)."""
    used: Counter[str] = Counter()
    for pid, (part, cpu) in after.items():
        used[part] += cpu - before.get(pid, (part, 0.0))[1]
    return dict(used.most_common())


def _part(cmdline: str) -> str:
    for service in SERVICES:
        if f"services.{service}" in cmdline:
            return service
    if "redis" in cmdline:
        return "redis"
    return "vllm engine" if "EngineCore" in cmdline or "VLLM" in cmdline else cmdline[:40]


def asympo_cli(home: Path, *args: str, cache: Path | None = None) -> str:
    """Run `asympo ARGS` against the stack in `home` (never the user's own stack or token); its stdout."""
    env = {**os.environ, "ASYMPO_HOME": str(home)}
    if cache:
        env["ASYMPO_LEARNER_MODEL_CACHE"] = str(cache)
    env.pop(TOKEN_ENV, None)
    env.pop("ASYMPO_REDIS_URL", None)
    proc = subprocess.run([sys.executable, "-m", "asympo.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1800)  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"asympo {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@contextmanager
def stack_up(
    home: Path, gateway_port: int, engine: str, cache: Path | None, *up_flags: str
) -> Iterator[tuple[LocalStack, GatewayClient]]:
    """The local stack started in `home` (`up_flags` added to `asympo up`) with a client of its gateway;
    `asympo down` on the way out."""
    asympo_cli(home, "up", "--gateway-port", str(gateway_port), "--engine", engine, *up_flags, cache=cache)
    try:
        stack = LocalStack(StackConfig(home=home))
        client = GatewayClient(stack.gateway_url(), (home / "api-token").read_text().strip())
        try:
            yield stack, client
        finally:
            client.close()
    finally:
        asympo_cli(home, "down")


def run_to_end(client: GatewayClient, spec: JobSpec, poll_s: float = 15.0) -> tuple[dict, list[dict], dict]:
    """Submit the job, wait for it to succeed; (job record, step records, summary)."""
    job_id = client.submit(spec.to_yaml())["job_id"]
    while (job := client.job(job_id))["state"] not in FINAL_STATES:
        print(f"  job {job_id}: {job['state']} step {job['step']}", file=sys.stderr)
        time.sleep(poll_s)
    if job["state"] != "succeeded":
        raise RuntimeError(f"the job ended {job['state']}: {job['message']}")
    records = client.metrics(job_id, last=10_000)
    return job, records, summarize(job, records, client.versions(job_id))
