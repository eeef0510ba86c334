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
from tests.support.learner_run import trained, until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PROMPTS, STALENESS = 16, 2
FIRST_DISPATCH = (STALENESS + 1) * PROMPTS  # what the dispatcher sends before any step trains


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
    await until(lambda: run.redis.xlen(run.keys.prompts), lambda n: n >= FIRST_DISPATCH, 120)
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


async def test_a_checkpoint_between_publications_resumes_as_a_version_of_its_own(learner_run):
    # sync_every 2: steps 2, 4, 6 publish versions 1, 2, 3. The checkpoint of step 3 holds weights that no
    # version has; resumed from it, they must not pass for version 1 (whose groups would then train with
    # ratio 1 against weights that did not sample them): the learner publishes them as version 2.
    run = learner_run(algorithm__loss="grpo", algorithm__max_staleness=STALENESS, algorithm__steps=6,
                      algorithm__sync_every=2, checkpoint__every=1, eval__every=1000)  # fmt: skip
    await run.submit()
    first = run.start_learner(1, env={FAILPOINT: "checkpoint_pointed@3"})
    await run.start_sampler()
    assert await asyncio.to_thread(first.wait_exit, 300) == 137, "".join(first.lines[-40:])
    assert [(r["step"], r["version"]) for r in trained(await run.records())] == [(1, 0), (2, 1), (3, 1)]
    assert await run.versions() == [0, 1]

    run.start_learner(1)
    job = await run.finish()
    assert job.state == "succeeded", job.message
    await check_history(run.redis, run.keys, run.spec)
    after = trained(await run.records())[3:]
    # Version 2 is the resumed weights, published before step 4 trained: step 4's weights are version 3.
    assert [(r["step"], r["version"]) for r in after] == [(4, 3), (5, 3), (6, 4)]
    assert await run.versions() == [0, 1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and 0.0 <= r["clip_frac"] <= 1.0 for r in after), after
