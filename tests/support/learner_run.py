"""One job driven through a real learner process on a real Redis, with the reference sampler standing in
for the rollout pods and the reward service (tests of the learner that do not need vLLM)."""

from __future__ import annotations

import asyncio
import json
import time

from asympo.bus import QUEUE, JobKeys, decode
from asympo.jobs.records import FINAL_STATES, JobRecord, get_job, put_job
from asympo.proto.v1 import bus_pb2
from asympo.reference.sampler import ReferenceSampler
from tests.support.service_process import ServiceProcess


class LearnerRun:
    """One job: its record in Redis, a learner subprocess, and the reference sampler in this event loop."""

    def __init__(self, redis, redis_url: str, tmp_path, tiny_cache, spec, job_id: str):
        self.redis, self.url, self.tmp, self.cache = redis, redis_url, tmp_path, tiny_cache
        self.spec = spec
        self.keys = JobKeys(job_id)
        self.learner: ServiceProcess | None = None
        self.sampler_task: asyncio.Task | None = None
        self.sampler_stop = asyncio.Event()

    async def submit(self) -> None:
        await put_job(self.redis, JobRecord(job_id=self.keys.job_id, spec=self.spec))
        await self.redis.rpush(QUEUE, self.keys.job_id)

    def start_learner(
        self,
        ranks: int = 1,
        *extra: str,
        env: dict | None = None,
        start_timeout_s: float = 120.0,
        from_queue: bool = False,
    ) -> ServiceProcess:
        """A learner process for this job (torchrun for ranks > 1); `extra` flags, `env` e.g. a failpoint."""
        launcher = (
            ("torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), "-m")
            if ranks > 1
            else ()
        )
        # --job-id binds the learner to this job; from_queue lets it take every queued job in turn.
        bound = [] if from_queue else ["--job-id", self.keys.job_id]
        flags = [*bound, "--weight-store", str(self.tmp / "store"),
                 "--checkpoint-dir", str(self.tmp / "checkpoints"), "--model-cache", str(self.cache),
                 "--poll-s", "0.2", *extra]  # fmt: skip
        self.learner = ServiceProcess(
            "services.learner", *flags, env={"ASYMPO_REDIS_URL": self.url, **(env or {})}, launcher=launcher,
            start_timeout_s=start_timeout_s,
        )  # fmt: skip
        return self.learner

    async def start_sampler(
        self, timeout_s: float = 120, when=lambda j: j.state == "running", batch_prompts: int | None = None
    ) -> None:
        """Start sampling once `when(job)` holds (by default: running, so version 0 is out), `batch_prompts`
        tasks per batch (by default a step's)."""
        job = await self.wait_for(when, timeout_s)
        self.sampler_stop = asyncio.Event()  # a sampler stopped before may be started again
        batch = batch_prompts or self.spec.algorithm.prompts_per_step
        sampler = ReferenceSampler(self.redis, job, batch_prompts=batch)
        self.sampler_task = asyncio.ensure_future(sampler.run(self.sampler_stop))

    async def wait_for(self, predicate, timeout_s: float) -> JobRecord:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = await get_job(self.redis, self.keys.job_id)
            if job is not None and predicate(job):
                return job
            if job is not None and job.state == "failed":
                raise AssertionError(f"job failed: {job.message}\n" + "".join(self.learner.lines[-40:]))
            if self.sampler_task is not None and self.sampler_task.done():
                self.sampler_task.result()  # surface a sampler crash
            await asyncio.sleep(0.2)
        raise AssertionError(
            f"timed out; job is {job.state if job else None}\n" + "".join(self.learner.lines[-40:])
        )

    async def finish(self, timeout_s: float = 600) -> JobRecord:
        job = await self.wait_for(lambda j: j.state in FINAL_STATES, timeout_s)
        await asyncio.to_thread(self.learner.proc.wait, 60)
        await self.stop_sampler()
        return job

    async def stop_sampler(self) -> None:
        self.sampler_stop.set()
        if self.sampler_task is not None:
            await self.sampler_task

    async def records(self) -> list[dict]:
        return [json.loads(f[b"json"]) for _, f in await self.redis.xrange(self.keys.steps)]

    async def versions(self) -> list[int]:
        return [
            decode(f, bus_pb2.PolicyVersion).version for _, f in await self.redis.xrange(self.keys.policy)
        ]


def trained(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("prompt_ids")]


async def until(probe, done, timeout_s: float):
    """Poll the coroutine function `probe()` until `done(value)`; the value (fails after timeout_s)."""
    deadline = time.monotonic() + timeout_s
    while not done(value := await probe()):
        assert time.monotonic() < deadline, f"still {value!r} after {timeout_s} s"
        await asyncio.sleep(0.1)
    return value
