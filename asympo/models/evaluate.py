"""Held-out evaluation: greedy accuracy against reference answers."""

from __future__ import annotations

from asympo.models.hf_generate import hf_generate
from asympo.tasks import exact_match
from asympo.tasks.base import Problem


def greedy_accuracy(
    model, tokenizer, problems: list[Problem], max_new_tokens: int, batch_size: int = 256
) -> float:
    """Fraction of problems whose greedy completion matches the reference exactly."""
    if not problems:
        raise ValueError("no problems to evaluate")
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        outs = hf_generate(
            model, tokenizer, [p.prompt for p in chunk], max_new_tokens=max_new_tokens, greedy=True
        )
        correct += sum(exact_match(o[0].text, p.reference) for o, p in zip(outs, chunk))
    model.train(was_training)
    return correct / len(problems)
