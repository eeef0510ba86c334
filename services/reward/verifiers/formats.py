"""Answer formats: finding a `\\boxed{}` answer, and the `format:<fmt>:<verifier>` family that makes a
format mandatory before another verifier scores the completion."""

from __future__ import annotations

import re
from collections.abc import Callable

from ..scores import ScoreResult, unparsable
from .registry import Verifier, register_family, resolve

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_THINK = re.compile(r"\A\s*<think>(.*?)</think>(.*)\Z", re.DOTALL)


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`) with balanced braces, else None."""
    for start in reversed([m.end() for m in _BOXED.finditer(text)]):
        depth = 1
        for i in range(start, len(text)):
            c = text[i]
            if c == "{" and text[i - 1] != "\\":
                depth += 1
            elif c == "}" and text[i - 1] != "\\":
                depth -= 1
                if depth == 0:
                    return text[start:i]
        # An unclosed box (a truncated generation): an earlier, complete one may still be the answer.
    return None


def _boxed(completion: str) -> tuple[str | None, str]:
    answer = last_boxed(completion)
    if answer is None:
        return None, "format: no \\boxed{} answer found"
    if not answer.strip():
        return None, "format: the \\boxed{} answer is empty"
    return completion, ""


def _think(completion: str) -> tuple[str | None, str]:
    m = _THINK.match(completion)
    if m is None:
        return None, "format: the completion must start with <think>…</think>"
    if "<think>" in m.group(1) or "</think>" in m.group(2):
        return None, "format: more than one <think> block"
    if not m.group(2).strip():
        return None, "format: no answer after </think>"
    return m.group(2), ""


# Each check returns (the text the inner verifier scores, "") or (None, why the format is missing).
FORMATS: dict[str, Callable[[str], tuple[str | None, str]]] = {
    "boxed": _boxed,  # a non-empty \boxed{} answer; the inner verifier sees the whole completion
    "think": _think,  # <think>reasoning</think> then the answer; the inner verifier sees only the answer
}


def _format_family(arg: str) -> Verifier:
    fmt, sep, inner_name = arg.partition(":")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    if not sep or not inner_name:
        raise ValueError("name the verifier that scores the answer, e.g. format:boxed:math")
    inner = resolve(inner_name)
    check = FORMATS[fmt]

    def score(completion: str, reference: str) -> ScoreResult:
        text, why = check(completion)
        if text is None:
            return unparsable(why)
        return inner(text, reference)

    return Verifier(f"format:{arg}", score, inner.isolated, f"requires the {fmt} format, then {inner.name}")


register_family(
    "format",
    _format_family,
    usage="format:<boxed|think>:<verifier>",
    description="reward 0 (unparsable) unless the completion has the format, else the inner verifier's score",
)
