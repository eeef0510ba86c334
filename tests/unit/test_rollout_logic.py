"""Rollout pod logic that needs no services: retry backoff, probe comparison, the hf engine."""

import pytest
import torch

from asympo.algo import token_logprobs
from asympo.jobs.spec import TinyModelSpec
from asympo.models.tiny import build_model, build_tokenizer
from asympo.proto.v1 import bus_pb2
from asympo.weights.probes import Probe
from asympo.weights.store import VersionManifest
from services.rollout.engines import GenRequest
from services.rollout.engines.hf_engine import HfEngine
from services.rollout.policy import RetryGate
from services.rollout.verify import probe_mismatch


def test_retry_gate_backs_off_per_version():
    now = [100.0]
    gate = RetryGate(first_s=0.05, cap_s=0.2, clock=lambda: now[0])
    v1 = bus_pb2.PolicyVersion(version=1, sha256="a")
    v1_other = bus_pb2.PolicyVersion(version=1, sha256="b")
    assert gate.ready(v1)
    gate.failed(v1)
    assert not gate.ready(v1) and gate.ready(v1_other)
    now[0] += 0.06
    assert gate.ready(v1)
    gate.failed(v1)
    assert not gate.ready(v1)  # the second wait is twice as long
    now[0] += 0.06
    assert not gate.ready(v1)
    now[0] += 0.05
    assert gate.ready(v1)
    for _ in range(5):
        gate.failed(v1)
    now[0] += 0.2
    assert gate.ready(v1)  # capped


def _manifest(*probes):
    return VersionManifest(
        job_id="j", version=1, step=1, sha256="x", bytes=0, files={}, probes=list(probes), created_at=0.0
    )


def test_probe_mismatch_is_the_worst_token():
    m = _manifest(Probe([1, 2, 3], 1, [-0.5, -1.0]), Probe([4, 5], 1, [-2.0]))
    assert probe_mismatch(m, [[-0.5, -1.0], [-2.0]]) == 0.0
    assert probe_mismatch(m, [[-0.5, -1.3], [-2.1]]) == pytest.approx(0.3)
    assert probe_mismatch(m, [[-0.5], [-2.0]]) == float("inf")
    # A NaN served log-prob must never pass a tolerance check.
    assert probe_mismatch(m, [[-0.5, float("nan")], [-2.0]]) == float("inf")


@pytest.fixture(scope="module")
def hf_engine(tmp_path_factory):
    tok = build_tokenizer()
    model = build_model(TinyModelSpec(), tok)
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return HfEngine(path), model, path


def test_hf_engine_generates_groups_with_raw_logprobs(hf_engine):
    engine, model, _ = hf_engine
    ids = engine.tokenizer("12+34=").input_ids
    reqs = [
        GenRequest(ids, n=4, max_new_tokens=5, seed=1, logprobs=True),
        GenRequest(engine.tokenizer("7*8=").input_ids, n=2, max_new_tokens=3, seed=2),
    ]
    groups = engine.generate(reqs)
    assert [len(g) for g in groups] == [4, 2]
    for s in groups[0]:
        assert len(s.logprobs) == len(s.token_ids)
        # The log-probs are the policy's own (temperature 1), computed again by a forward pass.
        x = torch.tensor([ids + s.token_ids])
        with torch.no_grad():
            ref = token_logprobs(model(input_ids=x).logits[0, len(ids) - 1 : -1], x[0, len(ids) :])
        torch.testing.assert_close(torch.tensor(s.logprobs), ref, atol=1e-4, rtol=1e-4)
    assert all(not s.logprobs for s in groups[1])


def test_hf_engine_greedy_and_sequence_logprobs(hf_engine):
    engine, model, path = hf_engine
    ids = engine.tokenizer("12+34=46").input_ids
    (group,) = engine.generate([GenRequest(ids[:6], n=3, max_new_tokens=4, temperature=0.0)])
    assert len({tuple(s.token_ids) for s in group}) == 1  # temperature 0 is greedy
    (lps,) = engine.sequence_logprobs([ids], [6])
    assert len(lps) == 2 and all(v < 0 for v in lps)
    engine.load_weights(path)  # same weights: same answers
    assert engine.sequence_logprobs([ids], [6]) == [lps]
