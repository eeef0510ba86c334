"""The `math` verifier: math-verify reads the final answer (the last `\\boxed{}` if there is one) and
compares it with the reference symbolically. Its own signal-based timeouts are off (they only work on the
main thread); the service enforces deadlines by killing the worker process instead."""

from __future__ import annotations

import logging
from functools import lru_cache

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from sympy import Basic, MatrixBase

from asympo.tasks.answers import exact_match

from ..scores import ScoreResult, clip_detail, error, ok, unparsable, wrong
from .formats import last_boxed
from .registry import register_verifier

# Boxed answers outrank "the answer is ..." phrases and bare expressions anywhere in the text.
_EXTRACTION = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
# A completion without a \\boxed{} answer is read from its last this many characters: the service's former
# cap on whole completions, so every completion it used to read is still read exactly as before.
UNBOXED_TAIL_CHARS = 10_000


class _DropTimeoutDisabled(logging.Filter):
    """math-verify warns that its timeout is off; here that is by design, so the line is only noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabled())


def _as_latex(reference: str) -> str:
    # A bare reference ("2(x+1)", "(1,3]") is read as plain text and mangled unless it is marked as math.
    if "\\boxed" in reference or "$" in reference:
        return reference
    return "\\boxed{" + reference.strip() + "}"


@lru_cache(maxsize=4096)
def parse_reference(reference: str) -> tuple:
    """The reference parsed once per worker: a group's completions all share one reference."""
    return tuple(parse(_as_latex(reference), extraction_config=_EXTRACTION, parsing_timeout=None))


def parse_answer(completion: str) -> list:
    """math-verify's reading of the completion's final answer: [sympy object, source text] or []."""
    boxed = last_boxed(completion)
    if boxed is not None and boxed.strip():
        # math-verify runs a dozen regexes over the whole text (costlier the longer the reasoning) and
        # would read "\\boxed{3} ... \\boxed{4}" as "3,4"; the last box alone is the answer, as for `exact`.
        text = "\\boxed{" + boxed + "}"
    else:
        # Without a box only the end is read: math-verify's expression regex backtracks quadratically on
        # long runs of numbers (a repetition loop: 3 s for 32k characters, minutes for 256k).
        text = completion[-UNBOXED_TAIL_CHARS:]
    return parse(text, extraction_config=_EXTRACTION, parsing_timeout=None)


@register_verifier("math", isolated=True)
def math_answer(completion: str, reference: str) -> ScoreResult:
    """The final answer (\\boxed{} first) equals the reference symbolically or numerically (math-verify)."""
    if not completion.strip():
        return unparsable("empty completion")
    if not reference.strip():
        return error("empty reference")
    gold = parse_reference(reference)
    if not gold:
        return error(f"reference could not be parsed: {clip_detail(reference, 120)}")
    pred = parse_answer(completion)
    if not pred:
        return unparsable("no answer found")
    # The source text, never str(sympy object): printing some parsed expressions can itself hang.
    text = pred[-1] if isinstance(pred[-1], str) else ""
    shown = clip_detail(f"answer: {text}", 120)
    # Text answers ("yes", "Tuesday") have no symbolic reading worth comparing.
    if text and exact_match(text, reference):
        return ok(shown)
    if not any(isinstance(g, (Basic, MatrixBase)) for g in gold):
        # Only math-verify's raw-text fallback: the reference is not math, and a "wrong" would blame the policy.
        return error(f"reference is not a math expression: {clip_detail(reference, 120)}")
    if verify(list(gold), pred, timeout_seconds=None):
        return ok(shown)
    return wrong(shown)
