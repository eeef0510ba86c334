"""What every part of a running job shares: where it runs, its spec, its counters and its stop signal."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from asympo.bus import Fence, JobKeys, Ledger
from asympo.jobs.spec import JobSpec

from . import distributed as D
from .metrics import LearnerMetrics

if TYPE_CHECKING:
    from .settings import LearnerSettings


@dataclass
class Progress:
    """Where the job is: steps applied and newest version (kept in checkpoints), drops as last read from Redis."""

    step: int = 0
    version: int = 0
    dropped: dict = field(default_factory=dict)


@dataclass
class JobContext:
    """One job on this rank, as its parts (control, admission, commits, records) see it.

    Every write to the job's keys goes through `ledger` or carries `fence`.

    `spec` and `max_staleness` change while the job runs (live knobs); `progress` moves with each step.
    """

    settings: LearnerSettings
    world: D.World
    redis: object
    job_id: str
    spec: JobSpec
    metrics: LearnerMetrics
    # This learner's lease token, checked by every write to the job (a newer learner fences it out).
    fence: Fence | None = None
    progress: Progress = field(default_factory=Progress)
    # Set on SIGTERM: checkpoint and leave the job running for the next learner.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    max_staleness: int = -1
    # Why the job cannot go on (e.g. over its Redis budget with nothing left to drain); fails it at the next step.
    failure: str = ""
    # 1 on rank 0 while the newest step's version is being written in the background (publication.py):
    # the weights in memory are already that version.
    unannounced: int = 0
    # What stopped the background publication (publication.py); the step loop raises it.
    publication_error: BaseException | None = None

    def __post_init__(self):
        self.keys = JobKeys(self.job_id)
        self.fence = self.fence or Fence.none(self.keys.lease)
        self.ledger = Ledger(self.redis, self.keys, self.fence)
        if self.max_staleness < 0:
            self.max_staleness = self.spec.algorithm.max_staleness

    @property
    def fence_token(self) -> int | None:
        """The lease token as a number (None when unfenced: tools and tests)."""
        return int(self.fence.token) if self.fence.token else None

    def staleness(self, gen_version_start: int) -> int:
        """How many versions behind the weights being trained a group generated from gen_version_start is."""
        return self.progress.version + self.unannounced - gen_version_start
