"""The learner's commit protocol under crashes, on real processes, a real Redis and real checkpoints.

A failpoint (services/learner/failpoints.py) kills the learner between two effects of a step; the
next learner must make the job's history whole again: no step twice, no prompt twice, every dispatched
prompt trained or dropped with a reason, versions without gaps, and never a restart from the base
model when checkpoints existed. The reference sampler keeps producing groups throughout.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from asympo.bus import decode, encode
from asympo.bus.fence import lease_state
from asympo.jobs.control import request_control
from asympo.jobs.records import get_job
from asympo.proto.v1 import bus_pb2
from asympo.weights.store import list_versions, read_manifest, version_dir
from services.learner.failpoints import ENV as FAILPOINT
from tests.support.invariants import check_history
from tests.support.learner_run import trained

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

FAST_LEASE = ("--lease-ttl-s", "3")


async def crash_at(run, point: str, step: int, *flags: str):
    """Start a learner armed to die at point@step (the sampler too, if not yet) and wait until it has."""
    learner = run.start_learner(1, *FAST_LEASE, *flags, env={FAILPOINT: f"{point}@{step}"})
    if run.sampler_task is None:
        await run.start_sampler()  # groups keep coming across every restart from here on
    code = await asyncio.to_thread(learner.wait_exit, 300)
    assert code == 137, "".join(learner.lines[-40:])
    assert any(r.get("msg") == "failpoint reached: exiting" for r in learner.records), "".join(
        learner.lines[-5:]
    )
    return learner


async def test_a_crash_between_any_two_effects_of_a_step_loses_and_repeats_nothing(learner_run):
    run = learner_run(algorithm__max_staleness=2, algorithm__steps=16, checkpoint__every=3, eval__every=1000)
    await run.submit()
    store = run.tmp / "store"
    first = await crash_at(run, "after_train", 5)  # steps 4 committed, 5 trained: back to the checkpoint of 3

    resumed = []
    for point, step in [("after_write_version", 5), ("after_announce", 5), ("after_commit", 5),
                        ("checkpoint_written", 6), ("checkpoint_pointed", 9)]:  # fmt: skip
        learner = await crash_at(run, point, step)
        resumed += [r for r in learner.records if r.get("msg") == "resumed from checkpoint"]
        if point == "after_write_version":
            # The version's directory is in the store, but nobody announced it: an orphan.
            announced = [
                decode(f, bus_pb2.PolicyVersion).version for _, f in await run.redis.xrange(run.keys.policy)
            ]
            orphan = max(list_versions(store, run.keys.job_id))
            assert orphan == announced[-1] + 1
            orphan_sha = read_manifest(version_dir(store, run.keys.job_id, orphan)).sha256
    last = run.start_learner(1, *FAST_LEASE, "--restart-budget", "10")  # six crashes, on purpose
    job = await run.finish()
    assert job.state == "succeeded", job.message
    resumed += [r for r in last.records if r.get("msg") == "resumed from checkpoint"]

    # Never from the base model: every restart found a checkpoint, the last ones the newer checkpoint of 9.
    assert [r["step"] for r in resumed] == [3, 3, 3, 3, 3, 9], resumed
    counted = await check_history(run.redis, run.keys, run.spec)
    rollbacks = counted["rollbacks"]
    assert [r["superseded_steps"] for r in rollbacks] == [[4], [4], [4], [4, 5], [4, 5, 6]], rollbacks
    assert counted["dropped"]["rolled_back"] == sum(r["rolled_back_prompts"] for r in rollbacks) == 8 * 16
    # The orphan's number was given to the restored weights, announced this time.
    policy = {
        v.version: v
        for v in (decode(f, bus_pb2.PolicyVersion) for _, f in await run.redis.xrange(run.keys.policy))
    }
    assert orphan in policy and policy[orphan].sha256 != orphan_sha
    assert first.proc.returncode == 137


async def test_a_second_learner_waits_and_fences_the_first_out_after_it_stalls(learner_run):
    run = learner_run(algorithm__max_staleness=2, algorithm__steps=30, checkpoint__every=5, eval__every=1000)
    await run.submit()
    first = run.start_learner(1, *FAST_LEASE)
    await run.start_sampler()
    await run.wait_for(lambda j: j.step >= 4, 300)
    # Without groups the first learner idles (so the job cannot end before the second is up), and an idle
    # learner must still keep its lease.
    await run.stop_sampler()
    second = run.start_learner(1, *FAST_LEASE)
    waiting = second.wait_for_log("the job is held by another learner; waiting", timeout_s=120)
    assert waiting["holder"].endswith(f"/{first.proc.pid}")
    await asyncio.sleep(2 * 3)  # two lease lifetimes: the first keeps renewing, the second keeps waiting
    assert not any(r.get("msg") == "taking the job" for r in second.records)
    step_before = (await get_job(run.redis, run.keys.job_id)).step
    await run.start_sampler()
    await run.wait_for(lambda j: j.step > step_before, 120)  # the holder trains; the second still waits
    assert not any(r.get("msg") == "taking the job" for r in second.records)

    os.kill(first.proc.pid, signal.SIGSTOP)  # a learner that stalls (swapping, partitioned) past its lease
    try:
        second.wait_for_log("taking the job", timeout_s=60)
        second.wait_for_log("resumed from checkpoint", timeout_s=120)
    finally:
        os.kill(first.proc.pid, signal.SIGCONT)
    # Awake again, the first learner finds its token stale at its next write and leaves without one.
    assert await asyncio.to_thread(first.wait_exit, 120) == 1
    assert any(
        "took the job over" in r.get("msg", "") or "taken over" in r.get("msg", "") for r in first.records
    )
    job = await run.finish()
    assert job.state == "succeeded", job.message
    await check_history(run.redis, run.keys, run.spec)
    lease = await lease_state(run.redis, run.keys.lease)
    assert int(lease["token"]) == 2 and lease["clean"] == "1"


async def test_a_job_that_keeps_killing_its_learner_is_failed_with_the_cause(learner_run):
    run = learner_run(algorithm__steps=50, checkpoint__every=1, eval__every=1000)
    await run.submit()
    for _ in range(2):  # dies at step 2 every time, as a job that runs the learner out of memory would
        await crash_at(run, "after_train", 2)
    last = run.start_learner(1, *FAST_LEASE, "--restart-budget", "1", env={FAILPOINT: "after_train@2"})
    assert await asyncio.to_thread(last.wait_exit, 120) == 0
    job = await get_job(run.redis, run.keys.job_id)
    assert job.state == "failed" and "2 times" in job.message and "restart budget 1" in job.message, (
        job.message
    )
    assert job.report is not None and job.expires_at is not None  # ended: report stored, streams expire
    assert await run.redis.ttl(run.keys.steps) > 0


async def test_cancel_and_pause_while_the_job_is_starting_are_kept(learner_run):
    run = learner_run(algorithm__steps=500, eval__every=1000)
    await run.submit()
    learner = run.start_learner(1, *FAST_LEASE)
    await run.wait_for(lambda j: j.state == "starting", 120)
    await request_control(run.redis, run.keys.job_id, "pause")  # while the model loads
    started = learner.wait_for_log("job started", timeout_s=120)
    assert started["state"] == "paused"  # set up, and left as the user asked: not running
    assert (await get_job(run.redis, run.keys.job_id)).state == "paused"
    await run.start_sampler(when=lambda j: True)
    await asyncio.sleep(2.0)
    assert not trained(await run.records())  # paused: no step
    await request_control(run.redis, run.keys.job_id, "resume")
    await run.wait_for(lambda j: j.step >= 2, 120)
    await request_control(run.redis, run.keys.job_id, "cancel")
    job = await run.finish(timeout_s=120)
    assert job.state == "cancelled" and learner.proc.returncode == 0

    # Cancel during `starting`: the learner finishes loading and stops without a step.
    again = learner_run(job_id=run.keys.job_id + "-b", algorithm__steps=500, eval__every=1000)
    await again.submit()
    second = again.start_learner(1, *FAST_LEASE)
    await again.wait_for(lambda j: j.state == "starting", 120)
    await request_control(again.redis, again.keys.job_id, "cancel")
    assert await asyncio.to_thread(second.wait_exit, 120) == 0
    job = await get_job(again.redis, again.keys.job_id)
    assert job.state == "cancelled" and job.step == 0
    assert not trained(await again.records())


async def test_cancel_while_the_learner_is_down_is_kept_and_the_job_closed(learner_run):
    run = learner_run(algorithm__max_staleness=1, algorithm__steps=500, checkpoint__every=2, eval__every=1000)
    await run.submit()
    learner = run.start_learner(1, *FAST_LEASE)
    await run.start_sampler()
    await run.wait_for(lambda j: j.step >= 3, 300)
    learner.kill()
    steps_before = len(trained(await run.records()))
    job = await request_control(run.redis, run.keys.job_id, "cancel")  # nobody is running the job
    assert job.state == "cancelled"
    await run.stop_sampler()
    restarted = run.start_learner(1, *FAST_LEASE, "--retention-s", "3600")
    assert await asyncio.to_thread(restarted.wait_exit, 120) == 0
    assert any(r.get("msg") == "job already ended" for r in restarted.records)
    job = await get_job(run.redis, run.keys.job_id)
    assert job.state == "cancelled" and job.report["state"] == "cancelled"
    assert len(trained(await run.records())) == steps_before  # nothing trained after the cancel
    assert 0 < await run.redis.ttl(run.keys.groups) <= 3600
    assert job.report["steps"] == steps_before


async def test_a_forged_announcement_does_not_set_the_version_numbering_after_a_restart(learner_run):
    run = learner_run(algorithm__max_staleness=2, algorithm__steps=8, checkpoint__every=2, eval__every=1000)
    await run.submit()
    await crash_at(run, "after_commit", 3)
    forged = bus_pb2.PolicyVersion(
        job_id=run.keys.job_id, version=10**9, sha256="ab" * 32, uri="file:///tmp/x"
    )
    await run.redis.xadd(run.keys.policy, encode(forged))
    learner = run.start_learner(1, *FAST_LEASE)
    job = await run.finish()
    assert job.state == "succeeded" and job.version < 100, job
    assert any(
        r.get("msg") == "policy announcement of no version in the store passed over" for r in learner.records
    )
