"""Seconds per phase of writing or loading a version, for whoever builds a per-step timeline."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def timed(timings: dict[str, float] | None, phase: str) -> Iterator[None]:
    """Add the wall-clock seconds of the block to `timings[phase]` (nothing when `timings` is None)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - t0
