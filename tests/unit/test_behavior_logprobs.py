"""grpo's behavior log-probs, recomputed by the learner (services/learner/behavior.py): they are exactly what
the stale policy that sampled a response assigns it, and computing them leaves the model as it was."""

import copy
import random

import pytest
import torch

from asympo.jobs.spec import AlgorithmSpec, TinyModelSpec
from asympo.models.response_logprobs import response_logprobs
from asympo.models.tiny import build_model, build_tokenizer
from asympo.proto.v1 import bus_pb2
from services.learner.distributed import World
from services.learner.trainer import Row, Trainer

WORLD = World(0, 1, torch.device("cpu"))
ATOL = 1e-5  # fp32 on CPU: only the batching differs between the two computations


def make_trainer(tied: bool) -> tuple[Trainer, int]:
    torch.manual_seed(0)
    tok = build_tokenizer()
    model = build_model(TinyModelSpec(tie_embeddings=tied), tok)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    # Small micro-batches: a version's rows take several passes.
    return Trainer(model, opt, WORLD, AlgorithmSpec(loss="grpo"), tok.pad_token_id, micro_batch_rows=3), len(
        tok
    )


def groups(seed: int, vocab: int, version: int, n: int = 4, g: int = 4) -> list[bus_pb2.ScoredGroup]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(2, 6))]
        completions = [
            bus_pb2.Completion(token_ids=[rng.randrange(3, vocab) for _ in range(rng.randint(1, 7))], reward=float(j % 2))
            for j in range(g)
        ]  # fmt: skip
        out.append(bus_pb2.ScoredGroup(job_id="j", prompt_id=f"{seed}-{i}", prompt_token_ids=prompt,
                                       completions=completions, gen_version_start=version))  # fmt: skip
    return out


def rows_of(gs: list[bus_pb2.ScoredGroup]) -> list[Row]:
    return [
        Row(list(g.prompt_token_ids), list(c.token_ids), 0.0, g.gen_version_start)
        for g in gs
        for c in g.completions
    ]


def direct(model, row: Row) -> list[float]:
    """The row's response log-probs under `model`, scored alone (no padding, no micro-batch)."""
    ids = torch.tensor([row.prompt + row.response])
    with torch.no_grad():
        lp = response_logprobs(model.eval(), ids, torch.ones_like(ids), len(row.prompt) - 1)
    return lp[0].tolist()


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b))


@pytest.mark.parametrize("tied", [False, True])
def test_recomputed_behavior_logprobs_are_the_stale_sampling_policys(tied):
    trainer, vocab = make_trainer(tied)
    ring, model = trainer.behavior, trainer.model
    ring.record(0, keep=3)
    policies = {0: copy.deepcopy(model)}  # what a pod serving each version samples with
    for v in range(1, 4):
        stats = trainer.step(groups(100 + v, vocab, version=v - 1))
        assert not stats.get("skipped") and stats["behavior_versions"] == 0  # trained on-policy
        ring.record(v, keep=3)
        policies[v] = copy.deepcopy(model)
    assert ring.versions == [1, 2, 3] and ring.live == 3
    assert not ring.holds(0) and ring.holds(1) and not ring.holds(4)

    before = weights(model)
    rows = rows_of(groups(7, vocab, 1) + groups(8, vocab, 3) + groups(9, vocab, 2))
    random.Random(0).shuffle(rows)
    rows.sort(key=lambda r: len(r.prompt) + len(r.response))
    stats = ring.fill(rows, trainer._micro_batches)
    assert stats["behavior_versions"] == 2  # versions 1 and 2; version 3 is the model's own weights
    for name, w in weights(model).items():
        assert torch.equal(w, before[name]), f"{name} not restored"
    assert model.training  # the step's training passes run in train mode

    gap = 0.0
    for r in rows:
        if r.version == 3:
            assert r.behavior is None  # the current log-probs, detached: ratio 1, no pass
            continue
        expected = direct(policies[r.version], r)
        assert max_diff(r.behavior, expected) <= ATOL, r.version
        gap = max(gap, max_diff(r.behavior, direct(policies[3], r)))
    # Three steps at lr 1e-2 moved the policy: stale log-probs are not the current ones.
    assert gap > 1e-2, gap


def test_weights_moved_since_the_last_version_are_restored_from_a_copy():
    """sync_every > 1: the model holds no kept version, so even the newest version's rows get a pass."""
    trainer, vocab = make_trainer(False)
    ring, model = trainer.behavior, trainer.model
    ring.record(0, keep=2)
    published = copy.deepcopy(model)
    trainer.step(groups(1, vocab, version=0))  # not published: no record
    assert ring.live is None
    moved = weights(model)
    rows = rows_of(groups(2, vocab, 0))
    assert ring.fill(rows, trainer._micro_batches)["behavior_versions"] == 1
    for name, w in weights(model).items():
        assert torch.equal(w, moved[name]), f"{name} not restored"
    for r in rows:
        assert max_diff(r.behavior, direct(published, r)) <= ATOL


def test_rows_of_a_version_not_kept_fail_the_step_instead_of_training_wrongly():
    trainer, vocab = make_trainer(False)
    trainer.behavior.record(5, keep=2)
    with pytest.raises(RuntimeError, match="no_behavior_version"):
        trainer.step(groups(1, vocab, version=4))


def test_grpo_on_stale_groups_clips_and_on_live_groups_has_ratio_one():
    trainer, vocab = make_trainer(False)
    ring = trainer.behavior
    ring.record(0, keep=3)
    on_policy = trainer.step(groups(1, vocab, version=0))
    assert on_policy.get("clip_frac", 0.0) == 0.0  # ratio 1 everywhere: nothing to clip
    ring.record(1, keep=3)
    for v in (2, 3):
        trainer.step(groups(v, vocab, version=v - 1))
        ring.record(v, keep=3)
    stale = trainer.step(groups(9, vocab, version=1))  # two versions behind
    assert stale["behavior_versions"] == 1 and stale.get("clip_frac", 0.0) > 0
