"""What every task provides: problems with reference answers, a held-out set and a verifier name."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Problem:
    """A prompt and its reference answer; prompt_id is unique within a job."""

    prompt_id: str
    prompt: str
    reference: str


class Task(Protocol):
    """A source of training problems and a fixed held-out set."""

    verifier: str

    def heldout(self) -> list[Problem]:
        """The fixed evaluation problems (never yielded by train_stream)."""

    def train_stream(self, seed: int) -> Iterator[Problem]:
        """An endless, seeded stream of training problems with unique prompt_ids."""
