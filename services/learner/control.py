"""Control of a running job: its state and live knobs as the job record holds them, decided on rank 0.

The gateway applies pause, resume, cancel and knob changes to the job record itself (asympo.jobs.control),
so a request made while the learner is starting the job, or is down, is not lost: the learner reads the
record before every step and follows it. Its own transitions (starting → running, → succeeded) are
compare-and-set and fenced, so they never overwrite a user's cancel and never come from a learner
that lost the job.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from asympo.jobs.live_knobs import LIVE_KNOBS
from asympo.jobs.records import JobRecord, get_job
from asympo.jobs.states import transition, update_job

from . import distributed as D
from .job_context import JobContext

log = logging.getLogger(__name__)


class JobFailure(RuntimeError):
    """The job cannot go on; the message becomes the job's."""


@dataclass
class Decision:
    """What every rank does next, decided by rank 0."""

    action: str  # train | pause | stop
    max_staleness: int
    reason: str = ""


class JobControl:
    """The job's record: rank 0 reads state and knobs from it, every rank follows its decisions."""

    def __init__(self, ctx: JobContext, job: JobRecord, on_knob=lambda: None):
        self.ctx = ctx
        self.job = job
        self.on_knob = on_knob  # e.g. the dispatcher picks up a new max_staleness

    async def record(self) -> JobRecord | None:
        """The job's record as Redis holds it now (None if it was deleted)."""
        return await get_job(self.ctx.redis, self.ctx.job_id)

    async def running(self) -> bool:
        """Whether the job should keep training: running in Redis and no shutdown under way."""
        job = await self.record()
        return not self.ctx.stopping.is_set() and job is not None and job.state == "running"

    async def decide(self) -> Decision:
        """The next action for every rank (rank 0 decides, the others receive it)."""
        decision = await self._main_decision() if self.ctx.world.is_main else None
        decision = await asyncio.to_thread(D.broadcast, decision, self.ctx.world)
        if decision.action == "fail":
            raise JobFailure(decision.reason)
        return decision

    async def _main_decision(self) -> Decision:
        job = await self.record()
        if job is not None:
            self.follow_knobs(job)
        k = self.ctx.max_staleness
        if self.ctx.failure:
            return Decision("fail", k, self.ctx.failure)
        if self.ctx.stopping.is_set():
            return Decision("stop", k, "shutdown")
        if job is None or job.state == "cancelled":
            return Decision("stop", k, "cancelled")
        if job.state == "paused":
            return Decision("pause", k)
        return Decision("train", k)

    def follow_knobs(self, job: JobRecord) -> None:
        """Take the live knobs (validated by whoever changed them) from the record's spec."""
        changed = False
        for dotted in LIVE_KNOBS.values():
            section, name = dotted.split(".")
            new = getattr(getattr(job.spec, section), name)
            if getattr(getattr(self.ctx.spec, section), name) != new:
                setattr(getattr(self.ctx.spec, section), name, new)
                log.info("knob set", extra={"key": dotted, "value": new})
                changed = True
        if changed:
            self.ctx.max_staleness = self.ctx.spec.algorithm.max_staleness
            self.on_knob()

    async def set_state(self, state: str, message: str | None = None, only_from=None) -> JobRecord:
        """Move the job to `state` (with the current step and version), if the state machine allows it."""
        p = self.ctx.progress
        self.job = await transition(
            self.ctx.redis, self.ctx.job_id, state, message=message, only_from=only_from, fence=self.ctx.fence,
            step=p.step, version=p.version,
        )  # fmt: skip
        return self.job

    async def start(self) -> JobRecord:
        """starting → running once the job is loaded; a job paused or cancelled meanwhile stays so."""

        def change(job: JobRecord) -> JobRecord | None:
            if job.state not in ("queued", "starting"):
                return None
            job.state = "running"
            job.step, job.version = self.ctx.progress.step, self.ctx.progress.version
            return job

        self.job = await update_job(self.ctx.redis, self.ctx.job_id, change, fence=self.ctx.fence)
        return self.job

    async def record_progress(self, step: int) -> None:
        """Write the newest committed step and the announced version into the record (whatever its state)."""
        version = self.ctx.progress.version

        def change(job: JobRecord) -> JobRecord | None:
            if (job.step, job.version) == (step, version):
                return None
            job.step, job.version = step, version
            return job

        await update_job(self.ctx.redis, self.ctx.job_id, change, fence=self.ctx.fence)
