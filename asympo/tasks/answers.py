"""Reference-answer matching for tasks with short exact answers (the `exact` verifier)."""

from __future__ import annotations

import re
from fractions import Fraction

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$|^[+-]?\d+/\d+$")


def normalize_answer(text: str) -> str:
    """Trim whitespace, a trailing period, surrounding `$`, thousands separators; case-fold."""
    s = text.strip().strip("$").strip()
    s = s.removesuffix(".").strip()
    if re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    return s.casefold()


def as_number(text: str) -> Fraction | None:
    """The exact rational value of a plain number ("12", "-0.5", "3/4", "1e3"), else None."""
    s = normalize_answer(text)
    if not _NUMBER.match(s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def exact_match(completion: str, reference: str) -> bool:
    """True when the completion equals the reference as a number (exactly) or as a normalized string."""
    a, b = as_number(completion), as_number(reference)
    if a is not None and b is not None:
        return a == b
    return normalize_answer(completion) == normalize_answer(reference) != ""
