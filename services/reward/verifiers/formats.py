"""Answer formats: finding a `\\boxed{}` answer, and the `format:<fmt>:<verifier>` family that makes a
format mandatory before another verifier scores the completion."""

from __future__ import annotations

import re
from collections.abc import Callable

from ..scores import ScoreResult, unparsable
from .registry import Verifier, register_family, resolve

# A box opening (through its brace), or a brace not escaped with a backslash. No nested quantifiers: the
# regex engine reads each character a bounded number of times, and finditer never goes back.
_TOKEN = re.compile(r"(\\(?:boxed|fbox)\s*\{)|(?<!\\)[{}]")
_THINK = re.compile(r"\A\s*<think>(.*?)</think>(.*)\Z", re.DOTALL)

# Only the end of a completion is searched for its box, so the work per completion is bounded whatever
# the service's completion cap; this is that cap's default, so under it every completion is read whole.
BOX_SCAN_CHARS = 262_144


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`) with balanced braces among the last
    BOX_SCAN_CHARS characters, else None."""
    # One pass over the tokens with constant work each, however many boxes a truncated generation left
    # open. Braces outside every box cannot matter; inside, each box remembers the brace depth it opened
    # at, and closes at the brace that brings the depth back to it.
    window = text[-BOX_SCAN_CHARS:]
    best: tuple[int, int] | None = None  # (start, end) of the complete box that starts last
    open_boxes: list[tuple[int, int]] = []  # (content start, brace depth inside it), innermost last
    depth = 0
    for m in _TOKEN.finditer(window):
        if m.group(1) is not None:
            depth += 1
            open_boxes.append((m.end(), depth))
        elif not open_boxes:
            continue
        elif m.group() == "{":
            depth += 1
        else:
            if open_boxes[-1][1] == depth:
                # Boxes close innermost first, so the last-starting complete box may close before others.
                start = open_boxes.pop()[0]
                if best is None or start > best[0]:
                    best = (start, m.start())
            depth -= 1
    return None if best is None else window[best[0] : best[1]]


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
