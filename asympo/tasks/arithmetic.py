"""Seeded synthetic arithmetic: "47+85=" → "132" (or any template over a, op, b), with a fixed held-out set
excluded from training."""

from __future__ import annotations

import random
import string
from collections.abc import Iterator

from asympo.jobs.spec import ArithmeticTaskSpec
from asympo.tasks.base import Problem

_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


class ArithmeticTask:
    """Problems `a op b=` with operands of exactly `digits` digits (0-9 when digits is 1)."""

    verifier = "exact"

    def __init__(self, spec: ArithmeticTaskSpec):
        self.spec = spec
        self.lo = 0 if spec.digits == 1 else 10 ** (spec.digits - 1)
        self.hi = 10**spec.digits - 1
        rng = random.Random(f"heldout:{spec.seed}")
        held: dict[tuple[int, str, int], None] = {}
        while len(held) < spec.heldout_size:
            held[self._draw(rng)] = None
        self._heldout_keys = set(held)
        self._heldout = [self._problem(f"eval-{i}", key) for i, key in enumerate(held)]

    @property
    def alphabet(self) -> str:
        """Every character a prompt or an answer can contain."""
        literal = "".join(text for text, *_ in string.Formatter().parse(self.spec.template))
        return "".join(sorted(set("0123456789-" + "".join(self.spec.operators) + literal)))

    def _draw(self, rng: random.Random) -> tuple[int, str, int]:
        return rng.randint(self.lo, self.hi), rng.choice(self.spec.operators), rng.randint(self.lo, self.hi)

    def _problem(self, prompt_id: str, key: tuple[int, str, int]) -> Problem:
        a, op, b = key
        prompt = self.spec.template.format(a=a, op=op, b=b)
        return Problem(prompt_id, prompt, str(_APPLY[op](a, b)))

    def heldout(self) -> list[Problem]:
        """The fixed held-out problems, the same for every job with this task spec."""
        return list(self._heldout)

    def train_stream(self, seed: int) -> Iterator[Problem]:
        """Uniform draws that skip held-out problems; prompt_ids count up from t0."""
        rng = random.Random(f"train:{self.spec.seed}:{seed}")
        index = 0
        while True:
            key = self._draw(rng)
            if key in self._heldout_keys:
                continue
            yield self._problem(f"t{index}", key)
            index += 1

    def max_answer_chars(self) -> int:
        """Length of the longest possible answer, for sizing generation."""
        ends = [
            _APPLY[op](a, b)
            for op in self.spec.operators
            for a in (self.lo, self.hi)
            for b in (self.lo, self.hi)
        ]
        return max(len(str(v)) for v in ends)
