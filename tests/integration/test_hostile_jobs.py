"""A learner given a job that reads outside its allowed directories fails that job with the reason and
goes on to the next queued one (the gateway refuses such jobs too; this is the learner's own check, for
jobs that reached Redis some other way or a gateway configured with other roots)."""

from __future__ import annotations

import pytest

from asympo.bus import QUEUE
from asympo.jobs.path_roots import DATA_ROOTS_ENV, MODEL_ROOTS_ENV
from asympo.jobs.records import JobRecord, get_job, put_job
from asympo.jobs.spec import JobSpec

pytestmark = pytest.mark.slow


async def test_a_job_reading_outside_the_roots_fails_and_the_next_queued_job_runs(
    redis, learner_run, tmp_path
):
    hostile = JobSpec.from_data({"model": {"path": "/etc"}, "verifier": "math",
                                 "task": {"kind": "dataset", "path": "/etc/passwd.jsonl"}})  # fmt: skip
    await put_job(redis, JobRecord(job_id="hostile-1", spec=hostile))
    await redis.rpush(QUEUE, "hostile-1")
    run = learner_run("good-1", algorithm__steps=3, eval__every=1000)
    await run.submit()
    roots = {MODEL_ROOTS_ENV: str(tmp_path / "models"), DATA_ROOTS_ENV: str(tmp_path / "data")}
    run.start_learner(1, "--exit-when-idle", env=roots, from_queue=True)
    await run.start_sampler()  # waits for good-1 to run: the hostile job came first and is done
    failed = await get_job(redis, "hostile-1")
    assert failed.state == "failed", failed
    assert "model.path" in failed.message and "outside the directories" in failed.message
    assert "/etc/passwd" not in failed.message and "root:" not in failed.message
    job = await run.finish(timeout_s=300)
    assert job.state == "succeeded" and job.step == 3
