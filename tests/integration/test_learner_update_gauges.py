"""The learner's update gauges and staleness buckets through Trainer.step on the real tiny model (one CPU
rank): the two passes over micro-batches give exactly update_shares() of the whole batch's gradients, the
gauge pass leaves the applied update unchanged, and the balance gauges split by the groups' staleness."""

import asyncio
import copy
import random

import pytest
import torch

from asympo.algo import gpg_advantages, group_advantages, negative_part, policy_loss, update_shares
from asympo.jobs.spec import AlgorithmSpec, TinyModelSpec
from asympo.models.response_logprobs import pack_responses, response_logprobs, response_start
from asympo.models.tiny import build_model, build_tokenizer
from asympo.proto.v1 import bus_pb2
from asympo.reference.sampler import ReferenceSampler
from services.learner.distributed import World
from services.learner.trainer import Trainer
from services.learner.update_gauges import GAUGE_KEYS
from tests.support.learner_run import trained, until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # trains the tiny model

GROUPS, G = 8, 4
WORLD = World(rank=0, size=1, device=torch.device("cpu"))
STALENESS = [0, 0, 1, 1, 1, 3, 3, 3]


def batch(seed: int, vocab: int) -> list[bus_pb2.ScoredGroup]:
    """Random prompts and responses of varied lengths; every group has right and wrong answers."""
    rng = random.Random(seed)
    groups = []
    for i in range(GROUPS):
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(3, 7))]
        rewards = [1.0, 0.0] + [float(rng.random() < 0.4) for _ in range(G - 2)]
        completions = [
            bus_pb2.Completion(
                token_ids=[rng.randrange(3, vocab) for _ in range(rng.randint(1, 9))], reward=r
            )
            for r in rewards
        ]
        groups.append(bus_pb2.ScoredGroup(job_id="g", prompt_id=f"p{i}", prompt_token_ids=prompt,
                                          completions=completions))  # fmt: skip
    return groups


def whole_batch(model, groups, loss: str, pad_id: int):
    """The step's loss over the whole batch in one pass, as the reference loop computes it."""
    rewards = torch.tensor([[c.reward for c in g.completions] for g in groups])
    A = (gpg_advantages(rewards) if loss == "gpg" else group_advantages(rewards)).reshape(-1)
    prompts = [list(g.prompt_token_ids) for g in groups for _ in g.completions]
    responses = [list(c.token_ids) for g in groups for c in g.completions]
    input_ids, attention, mask = pack_responses(prompts, responses, pad_id)
    first = response_start(prompts)
    mask = mask[:, first:]
    logprobs = response_logprobs(model, input_ids, attention, first)
    return logprobs, mask, A


def expected_gauges(model, groups, loss: str, pad_id: int) -> dict:
    logprobs, mask, A = whole_batch(model, groups, loss, pad_id)
    options = AlgorithmSpec(loss=loss).options.for_loss()
    params = list(model.parameters())
    full, _ = policy_loss(loss, logprobs, mask, A, **options)
    g = torch.autograd.grad(full, params, retain_graph=True)
    g_neg = torch.autograd.grad(negative_part(loss, logprobs, mask, A, **options), params)
    return update_shares(g_neg, g)


def make_trainer(model, loss: str, pad_id: int, gauges_every: int) -> Trainer:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # Small micro-batches: the gauges must add up over several passes, some without A<0 rows.
    return Trainer(
        model, opt, WORLD, AlgorithmSpec(loss=loss), pad_id, micro_batch_rows=3, gauges_every=gauges_every
    )


@pytest.mark.parametrize("loss", ["asympo", "naive", "gpg"])
def test_gauges_are_update_shares_of_the_whole_batch_and_leave_the_update_alone(loss):
    torch.manual_seed(0)
    tok = build_tokenizer()
    model = build_model(TinyModelSpec(), tok)
    plain, reference = copy.deepcopy(model), copy.deepcopy(model)
    groups = batch(1, len(tok))
    expected = expected_gauges(reference, groups, loss, tok.pad_token_id)

    gauged = make_trainer(model, loss, tok.pad_token_id, gauges_every=2).step(groups, step=4)
    for key in GAUGE_KEYS:
        assert gauged[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-7), key
    assert 0.0 < gauged["grad_norm_neg"] and 0.0 < gauged["grad_norm_pos"]
    # The same step without gauges: no gauge keys, and exactly the same update.
    ungauged = make_trainer(plain, loss, tok.pad_token_id, gauges_every=2).step(groups, step=3)
    assert not set(GAUGE_KEYS) & ungauged.keys()
    assert ungauged["loss"] == gauged["loss"] and ungauged["grad_norm"] == gauged["grad_norm"]
    for (name, a), b in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert not set(GAUGE_KEYS) & make_trainer(plain, loss, tok.pad_token_id, 0).step(groups, step=4).keys()


def test_balance_gauges_per_staleness_bucket():
    torch.manual_seed(0)
    tok = build_tokenizer()
    model = build_model(TinyModelSpec(), tok)
    reference = copy.deepcopy(model)
    groups = batch(2, len(tok))
    stats = make_trainer(model, "asympo", tok.pad_token_id, 0).step(groups, step=1, staleness=STALENESS)

    with torch.no_grad():
        logprobs, mask, A = whole_batch(reference, groups, "asympo", tok.pad_token_id)
    S = -(logprobs * mask).sum(1) / mask.sum(1)
    row_staleness = torch.tensor([s for s in STALENESS for _ in range(G)])
    buckets = stats["by_staleness"]
    assert list(buckets) == ["0", "1", "3"]
    for key, bucket in buckets.items():
        rows = row_staleness == int(key)
        a, s = A[rows], S[rows]
        assert bucket["responses"] == int(rows.sum())
        assert bucket["delta"] == pytest.approx(float((a * s).mean()), rel=1e-4, abs=1e-6)
        R = float((-a[a < 0] * s[a < 0]).sum() / (a[a > 0] * s[a > 0]).sum())
        assert bucket["R"] == pytest.approx(R, rel=1e-4)
        assert bucket["S_neg"] == pytest.approx(float(s[a < 0].mean()), rel=1e-4)
    # The buckets add up to the step's own Δ.
    total = sum(b["delta"] * b["responses"] for b in buckets.values()) / stats["responses"]
    assert total == pytest.approx(stats["delta"], rel=1e-4, abs=1e-6)
    # Without staleness every row is counted fresh.
    assert list(make_trainer(model, "asympo", tok.pad_token_id, 0).step(groups)["by_staleness"]) == ["0"]


async def test_learner_records_and_exports_the_gauges(learner_run):
    """Through the learner process: every step record splits Δ and R by the staleness of its groups, gauge
    steps carry the update gauges, and /metrics exports both."""
    run = learner_run(algorithm__max_staleness=2, algorithm__steps=8, eval__every=1000, eval__gauges_every=2)
    await run.submit()
    learner = run.start_learner()
    job = await run.wait_for(lambda j: j.state == "running", 120)
    # Step 2 mixes staleness by construction: one batch of 24 groups from version 0 (step 1 trains 16 of
    # them), then, once version 1 is out, a batch of 8 from it: step 2 trains 8 groups 1 version old and
    # 8 fresh ones. The sampler then runs on its own.
    await until(lambda: run.redis.xlen(run.keys.prompts), lambda n: n >= 3 * 16, 120)  # the first dispatch
    sampler = ReferenceSampler(run.redis, job, batch_prompts=24)
    await until(sampler.step, lambda n: n > 0, 120)
    assert sampler.groups_published == 24 and sampler.version == 0
    await until(run.versions, lambda versions: 1 in versions, 120)
    sampler.batch_prompts = 8
    await until(sampler.step, lambda n: n > 0, 120)
    assert sampler.groups_published == 32 and sampler.version == 1
    sampler.batch_prompts = 4
    run.sampler_task = asyncio.ensure_future(sampler.run(run.sampler_stop))
    await run.wait_for(lambda j: j.step >= 2, 300)
    metrics = learner.metrics()
    assert (
        metrics[("asympo_learner_grad_norm_neg", ())] > 0
        and metrics[("asympo_learner_grad_norm_pos", ())] > 0
    )
    assert any(name == "asympo_learner_delta_by_staleness" for name, _ in metrics)
    job = await run.finish()
    assert job.state == "succeeded", job.message
    steps = trained(await run.records())
    assert [r["step"] for r in steps] == list(range(1, 9))
    G = run.spec.algorithm.group_size
    for r in steps:
        buckets = r["by_staleness"]
        assert set(buckets) == {str(s) for s in r["staleness"]}, r
        for k, bucket in buckets.items():
            assert bucket["responses"] == G * r["staleness"].count(int(k))
        assert sum(b["delta"] * b["responses"] for b in buckets.values()) / r["responses"] == pytest.approx(
            r["delta"], rel=1e-6, abs=1e-9
        )
        assert (set(GAUGE_KEYS) <= r.keys()) == (r["step"] % 2 == 0), r["step"]
    assert {k: b["responses"] for k, b in steps[1]["by_staleness"].items()} == {"0": 8 * G, "1": 8 * G}
