"""Poison never fails a job or its weights: bad groups are dead-lettered, non-finite steps skipped, and a
job whose work keeps dying for one cause fails with that cause (real learner, real Redis, real training).
"""

from __future__ import annotations

import asyncio
import json
import math
import re

import pytest
import torch
from safetensors.torch import load_file

from asympo.bus import GROUP_ROLLOUT, StreamConsumer, decode, publish, read_flow
from asympo.bus.ledger import drop_records
from asympo.jobs.records import FINAL_STATES
from asympo.proto.v1 import bus_pb2
from asympo.weights.store import local_path, read_manifest
from services.learner.failpoints import FAULT_ENV
from tests.support.invariants import check_history
from tests.support.learner_run import trained

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def pod(run, name: str) -> StreamConsumer:
    """A consumer of the job's prompt tasks, as a rollout pod has."""
    k = run.keys
    return StreamConsumer(
        run.redis, k.prompts, GROUP_ROLLOUT, name, bus_pb2.PromptTask, dead_stream=k.dead, job_id=k.job_id,
        flow_key=k.flow,
    )  # fmt: skip


def bad_group(task: bus_pb2.PromptTask, how: str) -> bus_pb2.ScoredGroup:
    """A group for a dispatched task that a buggy pod could publish."""
    t = task.prompt_token_ids[0]  # a token the model knows
    n, tokens = task.group_size, [[t, t]] * task.group_size
    if how == "oov":
        tokens = [[t, 10**6]] + tokens[1:]
    elif how == "huge":
        n, tokens = task.group_size * 4, [[t, t]] * (task.group_size * 4)
    elif how == "long":
        tokens = [[t] * (task.sampling.max_new_tokens + 5)] + tokens[1:]
    return bus_pb2.ScoredGroup(
        job_id=task.job_id, prompt_id=task.prompt_id, prompt_token_ids=task.prompt_token_ids, pod="bad-pod",
        completions=[bus_pb2.Completion(token_ids=t, reward=float(i % 2)) for i, t in zip(range(n), tokens)],
    )  # fmt: skip


async def publish_for_dispatched(run, hows: list[str]) -> list[str]:
    """Take len(hows) dispatched tasks as a buggy pod and publish a bad group for each; their prompt_ids."""
    bad = pod(run, "bad-pod")
    tasks = []
    while len(tasks) < len(hows):
        tasks += await bad.read(len(hows) - len(tasks), block_ms=500)
    groups = [bad_group(d.message, how) for d, how in zip(tasks, hows)]
    await bad.ack_and_publish([d.entry_id for d in tasks], run.keys.groups, groups)
    return [g.prompt_id for g in groups]


async def inject_nan_copy(run) -> str:
    """Copy a real group under a fresh prompt_id with a NaN reward, straight into the groups stream."""
    while True:
        for _, fields in await run.redis.xrange(run.keys.groups):
            real = decode(fields, bus_pb2.ScoredGroup)
            if real.pod == "reference-sampler":
                copy = bus_pb2.ScoredGroup()
                copy.CopyFrom(real)
                copy.prompt_id = "injected-nan"
                copy.completions[0].reward = math.nan
                await publish(run.redis, run.keys.groups, [copy])
                return copy.prompt_id
        await asyncio.sleep(0.2)


async def dead_letters(run) -> dict[str, dict]:
    """prompt_id → the dead-letter record of each group or task the job dead-lettered."""
    out = {}
    for _, fields in await run.redis.xrange(run.keys.dead):
        f = {k.decode(): v for k, v in fields.items()}
        kind = bus_pb2.PromptTask if f["stream"].decode() == run.keys.prompts else bus_pb2.ScoredGroup
        out[decode(fields, kind).prompt_id] = {k: f[k].decode() for k in ("reason", "counted", "stream")}
    return out


async def last_weights_are_finite(run) -> int:
    """Load the newest announced version from the weight store; assert every tensor and probe is finite."""
    pv = decode((await run.redis.xrevrange(run.keys.policy, count=1))[0][1], bus_pb2.PolicyVersion)
    path = local_path(pv.uri)
    tensors = load_file(str(path / "model.safetensors"))
    assert tensors and all(bool(torch.isfinite(t).all()) for t in tensors.values()), pv.version
    assert all(math.isfinite(x) for p in read_manifest(path).probes for x in p.logprobs)
    return pv.version


@pytest.mark.parametrize("loss", ["asympo", "gpg"])
async def test_bad_groups_are_dead_lettered_and_the_job_goes_on(learner_run, loss):
    """A NaN-reward copy under a fresh prompt_id, an out-of-vocabulary group, one with 4× the completions
    and one with an overlong response: each dead-lettered with its reason and counted, weights finite."""
    steps = 4
    run = learner_run(
        algorithm__loss=loss, algorithm__max_staleness=2, algorithm__steps=steps, eval__every=1000
    )
    await run.submit()
    run.start_learner()
    await run.wait_for(lambda j: j.state == "running", 120)
    hows = ["oov", "huge", "long"] if loss == "asympo" else ["oov"]
    dispatched_bad = await publish_for_dispatched(run, hows)
    await run.start_sampler()
    injected = await inject_nan_copy(run)
    job = await run.finish()
    assert job.state == "succeeded", job.message

    dead = await dead_letters(run)
    assert set(dead) == {*dispatched_bad, injected}, dead
    expected = {"oov": "token_id: completion 0 token 1000000 is outside the vocabulary", "huge": "group_size: 32 completions",
                "long": "response_length: completion 0 has 11 tokens, over its task's max_new_tokens 6"}  # fmt: skip
    for pid, how in zip(dispatched_bad, hows):
        assert dead[pid]["reason"].startswith(expected[how]), dead[pid]
        assert dead[pid]["counted"] == "dropped:dead"
    assert dead[injected]["reason"].startswith("reward: completion 0 has reward nan"), dead[injected]
    assert "'injected-nan' was never dispatched" in dead[injected]["reason"]
    assert dead[injected]["counted"] == "foreign"

    flow = await read_flow(run.redis, run.keys)
    assert (flow.dropped["dead"], flow.foreign) == (len(hows), 1), flow
    records = trained(await run.records())
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert not {injected, *dispatched_bad} & {p for r in records for p in r["prompt_ids"]}
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records)
    assert await last_weights_are_finite(run) == steps
    await check_history(run.redis, run.keys, run.spec)


async def test_a_non_finite_step_is_skipped_on_every_rank(learner_run):
    """A NaN gradient on rank 0, later a NaN loss on rank 0 alone (test faults): both FSDP2 ranks skip
    each step: nothing published for it, its groups dropped as `non_finite`, a skipped record; the job
    then finishes its steps."""
    steps = 3
    run = learner_run(algorithm__max_staleness=2, algorithm__steps=steps, eval__every=1000)
    await run.submit()
    learner = run.start_learner(2, env={FAULT_ENV: "nonfinite_grad@2,nonfinite_loss@4"})
    await run.start_sampler()
    job = await run.finish()
    assert job.state == "succeeded", job.message + "".join(learner.lines[-30:])

    records = await run.records()
    skipped = [(r["step"], r["version"], r["cause"]) for r in records if r.get("skipped")]
    assert skipped == [(2, 1, "non-finite gradient"), (3, 2, "non-finite loss")], skipped
    assert [r["step"] for r in trained(records)] == [1, 2, 3]
    assert await run.versions() == [0, 1, 2, 3]  # the skipped attempts published nothing
    per_step = run.spec.algorithm.prompts_per_step
    drops = [d for d in await drop_records(run.redis, run.keys) if d["reason"] == "non_finite"]
    assert sum(len(d["prompt_ids"]) for d in drops) == 2 * per_step
    assert (await read_flow(run.redis, run.keys)).dropped["non_finite"] == 2 * per_step
    assert trained(records)[-1]["dropped"]["non_finite"] == 2 * per_step
    assert any(r.get("msg") == "step skipped: non-finite loss or gradient; its groups are dropped"
               for r in learner.records)  # fmt: skip
    assert await last_weights_are_finite(run) == steps
    await check_history(run.redis, run.keys, run.spec)


async def test_steps_that_stay_non_finite_fail_the_job(learner_run):
    """Every step non-finite: ten skipped steps in a row, then the job fails saying so."""
    run = learner_run(algorithm__max_staleness=1, algorithm__steps=50, eval__every=1000)
    await run.submit()
    run.start_learner(env={FAULT_ENV: "nonfinite_grad@1+"})
    await run.start_sampler()
    job = await run.finish()
    assert job.state == "failed"
    assert "10 steps in a row had a non-finite gradient" in job.message, job.message
    records = await run.records()
    assert [r["consecutive"] for r in records if r.get("skipped")] == list(range(1, 11))
    assert not trained(records) and await run.versions() == [0]


async def test_tasks_dead_lettered_for_one_cause_fail_the_job_with_it(learner_run):
    """A pod that dead-letters every task for the same reason: the job fails naming it instead of dispatching
    forever (limit: max(8, (max_staleness + 1) × prompts_per_step) = 8 here)."""
    run = learner_run(algorithm__max_staleness=0, algorithm__prompts_per_step=4, algorithm__steps=20,
                      eval__every=1000)  # fmt: skip
    await run.submit()
    run.start_learner(1, "--housekeeping-s", "0.3")
    await run.wait_for(lambda j: j.state == "running", 120)
    broken = pod(run, "broken-pod")
    while (job := await run.wait_for(lambda j: True, 10)).state not in FINAL_STATES:
        for d in await broken.read(4, block_ms=200):
            await broken.dead_letter(d.entry_id, {"pb": d.message.SerializeToString(), "v": b"1"},
                                     "unknown verifier 'nope'")  # fmt: skip
    job = await run.finish()
    assert job.state == "failed"
    assert re.match(r"every prompt task is being dead-lettered: unknown verifier 'nope' \(\d+ dead letters in a row",
                    job.message), job.message  # fmt: skip
    assert job.step == 0
    flow = await read_flow(run.redis, run.keys)
    assert flow.dropped["dead"] >= 8 and flow.trained == 0, flow
    steps = [json.loads(f[b"json"]) for _, f in await run.redis.xrange(run.keys.steps)]
    assert not trained(steps)
