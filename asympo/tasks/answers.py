"""Reference-answer matching for tasks with short exact answers (the `exact` verifier).

Completions are hostile input: every function here is linear in the text and bounded in what it builds.
A number is read exactly only up to MAX_NUMBER_CHARS characters and a decimal exponent of at most
MAX_EXPONENT; beyond that it compares as text, so `1e100000000` is simply not the reference `5`.
"""

from __future__ import annotations

import re
from fractions import Fraction

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$|^[+-]?\d+/\d+$")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?")

# Fraction("1e10000000") builds a ten-million-digit integer (13.5 s here), and int() of a long digit
# string is quadratic (Python refuses more than 4,300 digits anyway). An answer a task checks exactly is
# never near these bounds; within them a Fraction costs microseconds.
MAX_NUMBER_CHARS = 1000
MAX_EXPONENT = 1000


def normalize_answer(text: str) -> str:
    """Trim whitespace, a trailing period, surrounding `$`, thousands separators; case-fold."""
    s = text.strip().strip("$").strip()
    s = s.removesuffix(".").strip()
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return s.casefold()


def as_number(text: str) -> Fraction | None:
    """The exact rational value of a plain number ("12", "-0.5", "3/4", "1e3") within the bounds, else None."""
    s = normalize_answer(text)
    if len(s) > MAX_NUMBER_CHARS:
        return None
    m = _NUMBER.match(s)
    if m is None:
        return None
    exponent = m.group(3)
    if exponent is not None and abs(int(exponent[1:])) > MAX_EXPONENT:
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
