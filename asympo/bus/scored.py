"""Building the ScoredGroup a prompt task turns into (the same way on a pod and in the reference sampler),
and the checks a group must pass before the learner trains on it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from asympo.models.generation import GenSample
from asympo.proto.v1 import bus_pb2


def scored_group(
    task: bus_pb2.PromptTask, prompt_token_ids: Sequence[int], samples: Sequence[GenSample],
    scores: Sequence[tuple[float, str]], *, versions: tuple[int, int], pod: str,
    timings: bus_pb2.Timings | None = None,
) -> bus_pb2.ScoredGroup:  # fmt: skip
    """One task's completions with their (reward, status): tokens and rewards, never log-probs (for grpo the
    learner recomputes them from the version that generated the group)."""
    return bus_pb2.ScoredGroup(
        job_id=task.job_id,
        prompt_id=task.prompt_id,
        prompt_token_ids=prompt_token_ids,
        completions=[
            bus_pb2.Completion(
                token_ids=s.token_ids,
                text=s.text,
                reward=reward,
                finish_reason=s.finish_reason,
                reward_status=status,
            )  # fmt: skip
            for s, (reward, status) in zip(samples, scores)
        ],
        gen_version_start=versions[0],
        gen_version_end=versions[1],
        pod=pod,
        timings=timings,
    )


# Rewards past this size are a verifier's bug, and float32 advantages of their squares would overflow.
MAX_ABS_REWARD = 1e6


@dataclass(frozen=True)
class GroupLimits:
    """What a trainable ScoredGroup must respect: the job's group size, the model's vocabulary and positions."""

    group_size: int
    vocab_size: int
    max_positions: int | None = None


def group_problem(group: bus_pb2.ScoredGroup, limits: GroupLimits, max_new_tokens: int | None) -> str | None:
    """Why the group cannot be trained, as `<rule>: <detail>`, or None; `max_new_tokens` is its task's, if known."""
    completions = group.completions
    if len(completions) != limits.group_size:
        return f"group_size: {len(completions)} completions, the job's group_size is {limits.group_size}"
    for i, c in enumerate(completions):
        if not math.isfinite(c.reward) or abs(c.reward) > MAX_ABS_REWARD:
            return f"reward: completion {i} has reward {c.reward}, not a finite number within ±{MAX_ABS_REWARD:g}"
    prompt = group.prompt_token_ids
    if not prompt:
        return "prompt_length: the group has no prompt_token_ids"
    if limits.max_positions and len(prompt) >= limits.max_positions:
        return f"prompt_length: {len(prompt)} prompt tokens leave no room in the model's {limits.max_positions} positions"
    bad = _out_of_vocab(prompt, limits.vocab_size)
    if bad is not None:
        return f"token_id: prompt token {bad} is outside the vocabulary [0, {limits.vocab_size})"
    for i, c in enumerate(completions):
        n = len(c.token_ids)
        if max_new_tokens is not None and n > max_new_tokens:
            return f"response_length: completion {i} has {n} tokens, over its task's max_new_tokens {max_new_tokens}"
        if limits.max_positions and len(prompt) + n > limits.max_positions:
            return (
                f"response_length: prompt and completion {i} take {len(prompt) + n} positions, over the "
                f"model's {limits.max_positions}"
            )
        bad = _out_of_vocab(c.token_ids, limits.vocab_size)
        if bad is not None:
            return f"token_id: completion {i} token {bad} is outside the vocabulary [0, {limits.vocab_size})"
    return None


def _out_of_vocab(ids: Sequence[int], vocab_size: int) -> int | None:
    if ids and (min(ids) < 0 or max(ids) >= vocab_size):
        return next(t for t in ids if not 0 <= t < vocab_size)
    return None
