"""Behavior-corrected GRPO through the real learner on real Redis, with no log-probs on the bus.

The reference sampler (standing in for the pods) sends tokens and rewards only; the learner recomputes
each group's behavior log-probs with the weights of the version that generated it. A learner restarted
from a checkpoint holds only the version it resumed at: groups of older versions are dropped with the
reason `no_behavior_version`, never trained with wrong ratios.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math

import pytest

from asympo.tasks import build_task
from services.learner.failpoints import ENV as FAILPOINT
from tests.support.invariants import check_history
from tests.support.learner_run import trained

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PROMPTS, STALENESS = 16, 2
FIRST_DISPATCH = (STALENESS + 1) * PROMPTS  # what the dispatcher sends before any step trains


async def _until(probe, done, timeout_s: float):
    """Poll `probe()` until `done(value)`; the value."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not done(value := await probe()):
        assert asyncio.get_running_loop().time() < deadline, f"still {value!r} after {timeout_s} s"
        await asyncio.sleep(0.1)
    return value


def _check_steps(steps: list[dict]) -> None:
    for r in steps:
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]), r
        assert 0.0 <= r["clip_frac"] <= 1.0, r  # grpo's clip statistics are in every step record
        assert r["behavior_versions"] == len({s for s in r["staleness"] if s > 0}), r


async def test_grpo_trains_stale_groups_and_drops_versions_a_restart_lost(learner_run):
    # lr 3e-3 (the demo uses 3e-5): one update moves the tiny model enough for stale ratios to clip.
    run = learner_run(algorithm__loss="grpo", algorithm__max_staleness=STALENESS, algorithm__steps=6,
                      algorithm__lr=3e-3, checkpoint__every=1, eval__every=1000)  # fmt: skip
    await run.submit()
    first = run.start_learner(1, env={FAILPOINT: "checkpoint_pointed@2"})
    # One sampler batch takes the whole first dispatch, so version 0 generates all of it: step 1 trains
    # its groups on-policy, step 2 one version behind; the rest is left for after the crash.
    await _until(lambda: run.redis.xlen(run.keys.prompts), lambda n: n >= FIRST_DISPATCH, 120)
    await run.start_sampler(batch_prompts=FIRST_DISPATCH)
    assert await asyncio.to_thread(first.wait_exit, 300) == 137, "".join(first.lines[-40:])

    before = trained(await run.records())
    assert [r["step"] for r in before] == [1, 2]
    assert [set(r["staleness"]) for r in before] == [{0}, {1}]
    _check_steps(before)
    assert before[0]["clip_frac"] == 0.0  # on-policy: every ratio is exactly 1
    assert before[1]["clip_frac"] > 0.0  # the version-0 weights, not the current ones, gave the ratios

    run.start_learner(1)
    job = await run.finish()
    assert job.state == "succeeded", job.message
    counted = await check_history(run.redis, run.keys, run.spec)

    # Resumed at version 2, the learner holds no weights of version 0: the first dispatch's last 16 groups
    # (staleness 2, within the bound) are dropped for that reason rather than trained.
    first_ids = [p.prompt_id for p in itertools.islice(build_task(run.spec.task).train_stream(seed=run.spec.seed),
                                                       FIRST_DISPATCH)]  # fmt: skip
    left = set(first_ids) - {p for r in before for p in r["prompt_ids"]}
    assert len(left) == FIRST_DISPATCH - 2 * PROMPTS
    drops = {p: f[b"reason"].decode() for _, f in await run.redis.xrange(run.keys.drops)
             for p in json.loads(f[b"prompt_ids"])}  # fmt: skip
    assert all(drops.get(p) == "no_behavior_version" for p in left), {p: drops.get(p) for p in left}
    assert counted["dropped"]["no_behavior_version"] >= len(left)

    after = trained(await run.records())[2:]
    assert [r["step"] for r in after] == [3, 4, 5, 6]
    _check_steps(after)
