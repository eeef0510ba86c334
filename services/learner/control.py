"""Control of a running job: pause, resume, cancel and live knobs, decided on rank 0 and shared with all ranks."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import yaml

from asympo.jobs.records import FINAL_STATES, get_job, put_job
from asympo.jobs.spec import SpecError, live_knob
from asympo.proto.v1 import bus_pb2

from . import distributed as D

log = logging.getLogger(__name__)


@dataclass
class Decision:
    """What every rank does next, decided by rank 0."""

    action: str  # train | pause | stop
    max_staleness: int
    reason: str = ""


class JobControl:
    """Control of a running job (a part of JobRun)."""

    async def _decide(self) -> Decision:
        decision = None
        if self.world.is_main:
            decision = await self._main_decision()
        return await asyncio.to_thread(D.broadcast, decision, self.world)

    async def _main_decision(self) -> Decision:
        await self._apply_control_events()
        job = await get_job(self.redis, self.job.job_id)
        if self.stopping.is_set():
            return Decision("stop", self.max_staleness, "shutdown")
        if job is None or job.state == "cancelled":
            return Decision("stop", self.max_staleness, "cancelled")
        if job.state == "paused":
            return Decision("pause", self.max_staleness)
        return Decision("train", self.max_staleness)

    async def _apply_control_events(self) -> None:
        # On the first call the whole stream is read: earlier knob settings are re-applied (a restarted
        # learner keeps them), earlier pause/resume/cancel are not (the job record holds their outcome).
        replaying, self._replayed = not self._replayed, True
        for event in await self.control.read():
            await self._apply_event(event, replaying)

    async def _apply_event(self, event: bus_pb2.ControlEvent, replaying: bool) -> None:
        if event.kind == "set":
            await self._apply_knob(event.key, event.value, persist=not replaying)
            return
        job = await get_job(self.redis, self.job.job_id)
        if replaying or job is None:
            return
        if event.kind == "pause" and job.state == "running":
            await self._set_state("paused")
        elif event.kind == "resume" and job.state == "paused":
            await self._set_state("running")
        elif event.kind == "cancel" and job.state not in FINAL_STATES:
            await self._set_state("cancelled")
        elif event.kind not in ("pause", "resume", "cancel"):
            log.warning("unknown control event kind ignored", extra={"kind": event.kind})

    async def _apply_knob(self, key: str, value: str, persist: bool) -> None:
        """Set a live knob (validated like the job spec) and, unless replaying, record it in the job's spec."""
        try:
            dotted = live_knob(key)
            updated = self.spec.with_overrides({dotted: yaml.safe_load(value)})
        except (SpecError, yaml.YAMLError) as exc:
            log.warning("control event ignored", extra={"key": key, "value": value, "cause": str(exc)})
            return
        section = dotted.split(".")[0]
        setattr(self.spec, section, getattr(updated, section))
        self.max_staleness = self.spec.algorithm.max_staleness
        if self.dispatcher is not None:
            self.dispatcher.max_staleness = self.max_staleness
        log.info("knob set", extra={"key": dotted, "value": value})
        if persist:
            job = await get_job(self.redis, self.job.job_id)
            if job is not None:
                setattr(job.spec, section, getattr(updated, section))
                await put_job(self.redis, job)

    async def _set_state(self, state: str, message: str = "") -> None:
        job = await get_job(self.redis, self.job.job_id) or self.job
        job.state, job.message = state, message or job.message
        job.step, job.version = self.progress.step, self.progress.version
        await put_job(self.redis, job)
        self.job = job
