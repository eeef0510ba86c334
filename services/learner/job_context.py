"""What every part of a running job shares: where it runs, its spec, its counters and its stop signal."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from asympo.bus import JobKeys
from asympo.jobs.spec import JobSpec

from . import distributed as D
from .metrics import LearnerMetrics

if TYPE_CHECKING:
    from .settings import LearnerSettings


@dataclass
class Progress:
    """Counters that survive in checkpoints."""

    step: int = 0
    version: int = 0
    dropped: dict = field(default_factory=lambda: {"stale": 0, "duplicate": 0, "zero_variance": 0})


@dataclass
class JobContext:
    """One job on this rank, as its parts (control, admission, commits, records) see it.

    `spec` and `max_staleness` change while the job runs (live knobs); `progress` moves with each step.
    """

    settings: LearnerSettings
    world: D.World
    redis: object
    job_id: str
    spec: JobSpec
    metrics: LearnerMetrics
    progress: Progress = field(default_factory=Progress)
    # Set on SIGTERM: checkpoint and leave the job running for the next learner.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    max_staleness: int = -1

    def __post_init__(self):
        self.keys = JobKeys(self.job_id)
        if self.max_staleness < 0:
            self.max_staleness = self.spec.algorithm.max_staleness

    def staleness(self, gen_version_start: int) -> int:
        """How many versions behind the current one a group generated from gen_version_start is."""
        return self.progress.version - gen_version_start
