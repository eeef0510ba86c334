"""Held-out evaluation in the learner's process: greedy accuracy against reference answers."""

from __future__ import annotations

from collections.abc import Callable

from asympo.models.hf_generate import hf_generate_ids
from asympo.models.prompts import Prompter
from asympo.tasks import exact_match
from asympo.tasks.base import Problem


def greedy_accuracy(
    model,
    prompter: Prompter,
    problems: list[Problem],
    max_new_tokens: int,
    batch_size: int = 256,
    verify: Callable[[str, str], float] = exact_match,
) -> float:
    """Mean reward of each problem's greedy completion (exact match unless another verifier is given)."""
    if not problems:
        raise ValueError("no problems to evaluate")
    was_training = model.training
    model.eval()
    correct = 0.0
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        outs = hf_generate_ids(
            model, prompter.tokenizer, [prompter.ids(p.prompt) for p in chunk], max_new_tokens=max_new_tokens,
            greedy=True, stop_token_ids=prompter.stop_ids or None,
        )  # fmt: skip
        correct += sum(float(verify(o[0].text, p.reference)) for o, p in zip(outs, chunk))
    model.train(was_training)
    return correct / len(problems)
