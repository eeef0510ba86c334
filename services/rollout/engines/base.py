"""What the rollout pod needs from a generation engine."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from asympo.models.generation import GenRequest as GenRequest
from asympo.models.generation import GenSample as GenSample


class EngineError(RuntimeError):
    """The engine could not start, generate or load weights."""


class Engine(Protocol):
    """A generation engine serving one set of weights at a time."""

    name: str
    tokenizer: object
    dtype: str  # what the weights are served in, e.g. "float32" or "bfloat16"

    def generate(self, requests: list[GenRequest]) -> list[list[GenSample]]:
        """n samples for each request, in order."""

    def load_weights(self, path: Path) -> None:
        """Replace the served weights with the HF-format checkpoint in `path` (same architecture)."""

    def sequence_logprobs(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[list[float]]:
        """Log-prob of each token after prompt_len, given its prefix (to check which weights are served)."""

    def head_columns(self, dims: list[int]) -> list[list[float]] | None:
        """Columns `dims` of the output head's weight as the engine applies it, [len(dims), vocab]."""

    def reset_prefix_cache(self) -> None:
        """Forget cached KV so nothing computed with old weights is reused."""

    def close(self) -> None:
        """Release the engine."""
