"""The `exact` verifier: normalized string or exact numeric equality with the reference."""

from __future__ import annotations

from asympo.tasks.answers import exact_match, normalize_answer

from ..scores import ScoreResult, clip_detail, error, ok, unparsable, wrong
from .formats import last_boxed
from .registry import register_verifier


@register_verifier("exact")
def exact(completion: str, reference: str) -> ScoreResult:
    """The last \\boxed{} answer, or else the whole completion, equals the reference (numbers exactly)."""
    boxed = last_boxed(completion)
    answer = boxed if boxed is not None else completion
    if not normalize_answer(answer):
        return unparsable("empty answer" if boxed is not None else "empty completion")
    if not normalize_answer(reference):
        return error("empty reference")
    shown = clip_detail(f"answer: {answer.strip()}", 120)
    return ok(shown) if exact_match(answer, reference) else wrong(shown)
