"""Driving the local stack from e2e tests as a user would: the real `asympo` command, waits on job states."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from asympo.cli.client import GatewayClient
from asympo.cli.local_stack import LocalStack, StackConfig
from asympo.runtime.api_token import TOKEN_ENV
from asympo.runtime.grpc_auth import GRPC_TOKEN_ENV
from asympo.runtime.ports import free_port

REPO = Path(__file__).resolve().parents[2]


def asympo(
    home: Path, *args: str, timeout: float = 900, cache: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the real `asympo` command (as a user would) with this stack's home; `env` adds variables
    (without ASYMPO_REDIS_URL in it, the stack starts its own Redis; it makes its own tokens too)."""
    base = {k: v for k, v in os.environ.items() if k not in (TOKEN_ENV, GRPC_TOKEN_ENV, "ASYMPO_REDIS_URL")}
    env = {
        **base,
        "ASYMPO_HOME": str(home),
        **({"ASYMPO_LEARNER_MODEL_CACHE": str(cache)} if cache else {}),
        **(env or {}),
    }
    return subprocess.run([sys.executable, "-m", "asympo.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def wait(client: GatewayClient, job_id: str, predicate, timeout_s: float = 900) -> dict:
    """The job once predicate(job) holds; fails at once if the job fails."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.job(job_id)
        if predicate(job):
            return job
        assert job["state"] not in ("failed",), job["message"]
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting on {job_id}: {client.job(job_id)}")


@contextlib.contextmanager
def running_stack(
    home: Path, cache: Path, *flags: str, env: dict | None = None
) -> Iterator[tuple[LocalStack, GatewayClient]]:
    """`asympo up` with the session's model cache (the learner finds its base model there), then `down`."""
    up = asympo(home, "up", "--gateway-port", str(free_port()), *flags, cache=cache, env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    stack = LocalStack(StackConfig(home=home))
    client = GatewayClient(stack.gateway_url(), (home / "api-token").read_text().strip())
    try:
        yield stack, client
    finally:
        client.close()
        asympo(home, "down", timeout=300, env=env)
