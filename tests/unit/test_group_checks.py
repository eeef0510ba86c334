"""The checks a ScoredGroup must pass before the learner trains on it, and the learner's test faults."""

import math

import pytest

from asympo.bus.scored import GroupLimits, group_problem
from asympo.proto.v1 import bus_pb2
from services.learner import failpoints
from services.learner.housekeeping import dead_cause

LIMITS = GroupLimits(group_size=2, vocab_size=100, max_positions=32)


def group(rewards=(1.0, 0.0), tokens=((5, 6), (7,)), prompt=(1, 2, 3)):
    return bus_pb2.ScoredGroup(
        job_id="j",
        prompt_id="p",
        prompt_token_ids=list(prompt),
        completions=[bus_pb2.Completion(token_ids=list(t), reward=r) for r, t in zip(rewards, tokens)],
    )


def rule(g, limits=LIMITS, max_new_tokens=4):
    problem = group_problem(g, limits, max_new_tokens)
    return problem and problem.split(":")[0]


def test_a_good_group_passes():
    assert group_problem(group(), LIMITS, 4) is None
    assert group_problem(group(rewards=(-1e6, 1e6)), LIMITS, None) is None


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 2e6])
def test_rewards_must_be_finite_and_bounded(bad):
    assert rule(group(rewards=(1.0, bad))) == "reward"


def test_token_ids_must_be_in_the_vocabulary():
    assert rule(group(tokens=((5, 100), (7,)))) == "token_id"
    assert rule(group(tokens=((5, 6), (-1,)))) == "token_id"
    assert rule(group(prompt=(1, 250))) == "token_id"
    assert "completion 0 token 100" in group_problem(group(tokens=((5, 100), (7,))), LIMITS, 4)


def test_the_group_has_the_jobs_size():
    assert rule(group(rewards=(1.0, 0.0, 1.0), tokens=((5,), (6,), (7,)))) == "group_size"
    assert rule(group(rewards=(1.0,), tokens=((5,),))) == "group_size"


def test_lengths_are_bounded_by_the_task_and_the_model():
    assert rule(group(tokens=((5,) * 5, (7,))), max_new_tokens=4) == "response_length"
    assert rule(group(tokens=((5,) * 5, (7,))), max_new_tokens=None) is None  # task's bound not known
    assert rule(group(tokens=((5,) * 30, (7,))), max_new_tokens=None) == "response_length"  # 3 + 30 > 32
    assert rule(group(prompt=(1,) * 32)) == "prompt_length"
    assert rule(group(prompt=())) == "prompt_length"


def test_dead_letter_causes_ignore_what_varies_between_entries():
    assert dead_cause("reward: completion 2 has reward nan, not a finite number") == "reward"
    assert dead_cause("reward: completion 0 has reward inf (prompt_id 'x' was never dispatched)") == "reward"
    assert dead_cause("exceeded 5 deliveries") == "exceeded 5 deliveries"
    assert dead_cause("undecodable ScoredGroup payload (truncated)") == "undecodable ScoredGroup payload"


def test_faults_are_armed_for_one_attempt_or_onward(monkeypatch):
    monkeypatch.setattr(
        failpoints, "ARMED_FAULTS", [("nonfinite_grad", 2, False), ("nonfinite_loss", 4, True)]
    )
    assert [failpoints.injected(n) for n in (1, 2, 3, 4, 5)] == [
        "",
        "nonfinite_grad",
        "",
        "nonfinite_loss",
        "nonfinite_loss",
    ]
    monkeypatch.setattr(failpoints, "ARMED_FAULTS", [])
    assert failpoints.injected(2) == ""
