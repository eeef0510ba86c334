"""The learner as a real process on real Redis, fed by the reference sampler (no rollout or reward service).

Staleness stays within its bound; kill -9 and restart continues the version sequence, trains no prompt
twice and uses the groups produced while it was down; SIGTERM hands the job over; control follows the
job record. (Learning against the reference loop is checked through the whole stack by
tests/e2e/test_chaos.py.)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import grpc
import pytest

from asympo.bus import GROUP_ROLLOUT, decode
from asympo.jobs.control import request_control, set_knobs
from asympo.jobs.records import get_job
from asympo.jobs.spec import SpecError
from asympo.proto.v1 import bus_pb2, learner_pb2, learner_pb2_grpc
from asympo.weights.store import read_manifest
from asympo.weights.transfer import fetch_version
from tests.support.learner_run import trained, until
from tests.support.service_process import grpc_metadata

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


async def test_on_policy_status_and_weights(learner_run, tmp_path):
    """max_staleness 0 trains only on-policy groups; Status, FetchWeights, health and metrics answer."""
    run = learner_run(algorithm__max_staleness=0, algorithm__steps=12, eval__every=1000)
    await run.submit()
    learner = run.start_learner()
    await run.start_sampler()
    await run.wait_for(lambda j: j.step >= 6, 300)
    async with grpc.aio.insecure_channel(learner.target) as channel:
        status = await learner_pb2_grpc.LearnerServiceStub(channel).Status(
            learner_pb2.LearnerStatusRequest(), metadata=grpc_metadata()
        )
    assert status.job_id == run.keys.job_id and status.step >= 6 and status.version >= 6
    assert (
        dict(status.staleness.histogram) == {0: status.staleness.histogram[0]} and status.staleness.max == 0
    )
    newest = (await run.versions())[-1]
    local = await asyncio.to_thread(
        fetch_version, learner.target, run.keys.job_id, newest, tmp_path / "fetched"
    )
    assert read_manifest(local).version == newest
    assert learner.metric("asympo_learner_step") >= 6
    assert learner.metric("asympo_learner_group_staleness_count") >= 6 * 16
    job = await run.finish()
    assert job.state == "succeeded" and job.step == 12 and job.version == 12
    steps = trained(await run.records())
    assert all(s == 0 for r in steps for s in r["staleness"])
    assert {r["dropped"]["stale"] for r in steps} == {0}


async def test_kill_9_and_resume(learner_run):
    """A learner killed mid-job resumes from LATEST: versions continue, no prompt twice, no group lost."""
    run = learner_run(algorithm__max_staleness=4, algorithm__steps=30, checkpoint__every=1, eval__every=1000)
    await run.submit()
    first = run.start_learner()
    await run.start_sampler()
    await run.wait_for(lambda j: j.step >= 10, 300)
    # Sampling stops before the kill, so tasks are certainly waiting when the learner dies (a sampler
    # left running had often turned every task into a group first, and then nothing was made while down).
    await run.stop_sampler()
    waiting = await until(lambda: _undelivered_tasks(run), lambda n: n >= 16, 120)
    first.kill()
    killed_at_ms = int(time.time() * 1000)
    waiting = await _undelivered_tasks(run)  # nothing is dispatched once the learner is dead
    await run.start_sampler(when=lambda j: True)
    down = await until(lambda: _groups_since(run, killed_at_ms), lambda ids: len(ids) >= waiting, 120)
    second = run.start_learner()
    job = await run.finish()
    assert job.state == "succeeded", job.message
    assert any(r.get("msg") == "resumed from checkpoint" for r in second.records)

    versions = await run.versions()
    assert versions == list(range(versions[-1] + 1)), versions  # no gap, no repeat
    steps = trained(await run.records())
    ids = [p for r in steps for p in r["prompt_ids"]]
    repeated = [p for p, n in Counter(ids).items() if n > 1]
    assert not repeated, repeated
    # Made while the learner was down and trained after the restart. The restart re-trains the steps
    # that were not committed, so the newest of these groups can outgrow max_staleness before their
    # turn: those must be recorded as dropped for staleness, never vanish.
    drops = {p: f[b"reason"].decode() for _, f in await run.redis.xrange(run.keys.drops)
             for p in json.loads(f[b"prompt_ids"])}  # fmt: skip
    assert set(down) & set(ids), "no group made while the learner was down was trained"
    untrained = set(down) - set(ids)
    assert all(drops.get(p) == "stale" for p in untrained), {p: drops.get(p) for p in untrained}
    assert steps[-1]["step"] == 30


async def _undelivered_tasks(run) -> int:
    """Prompt tasks dispatched but not yet read by any sampler."""
    groups = await run.redis.xinfo_groups(run.keys.prompts)
    last = next(
        g["last-delivered-id"] for g in groups if g["name"] in (GROUP_ROLLOUT, GROUP_ROLLOUT.encode())
    )
    last = last.decode() if isinstance(last, bytes) else last
    return len(await run.redis.xrange(run.keys.prompts, min=f"({last}"))


async def _groups_since(run, ms: int) -> list[str]:
    """The prompt_ids of the groups published since `ms` (epoch milliseconds)."""
    return [
        decode(f, bus_pb2.ScoredGroup).prompt_id
        for _, f in await run.redis.xrange(run.keys.groups, min=f"{ms}-0")
    ]


async def test_sigterm_two_ranks_then_resume_on_one(learner_run):
    """2 ranks under torchrun stop cleanly on SIGTERM (checkpoint, job left running); 1 rank finishes the job,
    adopting the groups rank 1 had read but not trained."""
    run = learner_run(
        algorithm__max_staleness=1, algorithm__steps=16, checkpoint__every=100, eval__every=1000
    )
    await run.submit()
    two = run.start_learner(ranks=2)
    assert two.wait_for_log("serving")["world_size"] == 2
    await run.start_sampler()
    job = await run.wait_for(lambda j: j.step >= 5, 300)
    two.proc.terminate()  # torchrun passes SIGTERM on to both ranks
    await asyncio.to_thread(two.proc.wait, 120)
    assert any(r.get("msg") == "job ended" and r.get("state") == "running" for r in two.records), two.lines[
        -20:
    ]
    job = await get_job(run.redis, run.keys.job_id)
    assert job.state == "running"  # left for the next learner
    stopped_at = job.step
    assert stopped_at >= 5

    one = run.start_learner(ranks=1)
    job = await run.finish()
    assert job.state == "succeeded", job.message
    resumed = one.wait_for_log("resumed from checkpoint")
    assert resumed["step"] == stopped_at  # the SIGTERM checkpoint, not the periodic one
    steps = trained(await run.records())
    ids = [p for r in steps for p in r["prompt_ids"]]
    assert len(ids) == len(set(ids)) == 16 * 16
    assert await run.versions() == list(range(17))
    # Nothing is left pending in the learner group: rank 1's read-but-untrained groups were adopted.
    assert (await run.redis.xpending(run.keys.groups, "learner"))["pending"] == 0


async def test_pause_knob_resume_cancel(learner_run):
    """Pause stops training, a knob takes effect and is recorded, resume goes on, cancel ends: each
    request changes the job record (as the gateway does) and the learner follows it."""
    run = learner_run(algorithm__max_staleness=2, algorithm__steps=500, eval__every=1000)
    await run.submit()
    learner = run.start_learner()

    # No sampler yet: the learner waits for groups that do not come, and still pauses and resumes.
    await run.wait_for(lambda j: j.state == "running", 120)
    await request_control(run.redis, run.keys.job_id, "pause")
    await run.wait_for(lambda j: j.state == "paused", 60)
    await request_control(run.redis, run.keys.job_id, "resume")
    await run.start_sampler()
    await run.wait_for(lambda j: j.step >= 3, 300)

    await request_control(run.redis, run.keys.job_id, "pause")
    paused = await run.wait_for(lambda j: j.state == "paused", 60)
    # The learner stops after the step in progress: wait until its step counter has been still a while.
    await run.wait_for(lambda j: j.updated_at < time.time() - 2, 60)
    # At most the step being published and the one in progress when the pause came (the record shows
    # committed steps; a publication runs in the background of the next step).
    assert (await get_job(run.redis, run.keys.job_id)).step <= paused.step + 2
    await set_knobs(run.redis, run.keys.job_id, {"max_staleness": 0})
    for bad in ({"temperature": -1}, {"lr": 1}):  # refused, nothing changes
        with pytest.raises(SpecError):
            await set_knobs(run.redis, run.keys.job_id, bad)
    await request_control(run.redis, run.keys.job_id, "resume")
    job = await run.wait_for(lambda j: j.state == "running" and j.spec.algorithm.max_staleness == 0, 60)
    assert job.spec.sampling.temperature == run.spec.sampling.temperature
    resumed_at = job.step
    await run.wait_for(lambda j: j.step >= resumed_at + 4, 120)
    after = [r for r in trained(await run.records()) if r["step"] > resumed_at + 1]
    assert after and all(r["max_staleness"] == 0 and set(r["staleness"]) == {0} for r in after)
    assert any(
        r.get("msg") == "knob set" and r.get("key") == "algorithm.max_staleness" for r in learner.records
    )

    await request_control(run.redis, run.keys.job_id, "cancel")
    job = await run.finish(timeout_s=60)
    assert job.state == "cancelled" and job.step < 500
    assert learner.proc.returncode == 0
