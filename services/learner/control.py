"""Control of a running job: pause, resume, cancel and live knobs, decided on rank 0 and shared with all ranks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import yaml

from asympo.bus.follow import StreamFollower
from asympo.jobs.records import FINAL_STATES, JobRecord, get_job, put_job
from asympo.jobs.spec import SpecError, live_knob
from asympo.proto.v1 import bus_pb2

from . import distributed as D
from .job_context import JobContext

log = logging.getLogger(__name__)


@dataclass
class Decision:
    """What every rank does next, decided by rank 0."""

    action: str  # train | pause | stop
    max_staleness: int
    reason: str = ""


class JobControl:
    """The job's record and control stream: rank 0 applies events, every rank follows its decisions."""

    def __init__(self, ctx: JobContext, job: JobRecord, on_knob: Callable[[], None] = lambda: None):
        self.ctx = ctx
        self.job = job
        self.on_knob = on_knob  # e.g. the dispatcher picks up a new max_staleness
        self.follower = StreamFollower(ctx.redis, ctx.keys.control, bus_pb2.ControlEvent, ctx.job_id)
        self._replayed = False

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
        return await asyncio.to_thread(D.broadcast, decision, self.ctx.world)

    async def _main_decision(self) -> Decision:
        await self.apply_events()
        job = await self.record()
        k = self.ctx.max_staleness
        if self.ctx.stopping.is_set():
            return Decision("stop", k, "shutdown")
        if job is None or job.state == "cancelled":
            return Decision("stop", k, "cancelled")
        if job.state == "paused":
            return Decision("pause", k)
        return Decision("train", k)

    async def apply_events(self) -> None:
        """Apply the control events not seen yet (rank 0)."""
        # On the first call the whole stream is read: earlier knob settings are re-applied (a restarted
        # learner keeps them), earlier pause/resume/cancel are not (the job record holds their outcome).
        replaying, self._replayed = not self._replayed, True
        for event in await self.follower.read():
            await self._apply_event(event, replaying)

    async def _apply_event(self, event: bus_pb2.ControlEvent, replaying: bool) -> None:
        if event.kind == "set":
            await self._apply_knob(event.key, event.value, persist=not replaying)
            return
        job = await self.record()
        if replaying or job is None:
            return
        if event.kind == "pause" and job.state == "running":
            await self.set_state("paused")
        elif event.kind == "resume" and job.state == "paused":
            await self.set_state("running")
        elif event.kind == "cancel" and job.state not in FINAL_STATES:
            await self.set_state("cancelled")
        elif event.kind not in ("pause", "resume", "cancel"):
            log.warning("unknown control event kind ignored", extra={"kind": event.kind})

    async def _apply_knob(self, key: str, value: str, persist: bool) -> None:
        """Set a live knob (validated like the job spec) and, unless replaying, record it in the job's spec."""
        ctx = self.ctx
        try:
            dotted = live_knob(key)
            updated = ctx.spec.with_overrides({dotted: yaml.safe_load(value)})
        except (SpecError, yaml.YAMLError) as exc:
            log.warning("control event ignored", extra={"key": key, "value": value, "cause": str(exc)})
            return
        section = dotted.split(".")[0]
        setattr(ctx.spec, section, getattr(updated, section))
        ctx.max_staleness = ctx.spec.algorithm.max_staleness
        self.on_knob()
        log.info("knob set", extra={"key": dotted, "value": value})
        if persist:
            job = await self.record()
            if job is not None:
                setattr(job.spec, section, getattr(updated, section))
                await put_job(ctx.redis, job)

    async def set_state(self, state: str, message: str = "") -> None:
        """Write the job's state (with the current step and version) to its record."""
        job = await self.record() or self.job
        job.state, job.message = state, message or job.message
        job.step, job.version = self.ctx.progress.step, self.ctx.progress.version
        await put_job(self.ctx.redis, job)
        self.job = job
