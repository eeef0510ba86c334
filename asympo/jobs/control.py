"""Steering a job from outside: pause, resume, cancel and live knobs, applied to its record at once.

The job record is the truth every service follows, so a request changes the record itself through the
state machine (compare-and-set) and only then appends a ControlEvent to `asympo:{job}:control`, as a
notification and a history. A request therefore takes effect whenever it arrives: while the job is
queued, while the learner is starting it, or while no learner is running at all.
"""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from asympo.bus.keys import QUEUE, JobKeys
from asympo.bus.stream_io import publish
from asympo.jobs.live_knobs import live_knob
from asympo.jobs.records import FINAL_STATES, JobRecord
from asympo.jobs.states import TransitionRefused, transition, update_job
from asympo.proto.v1 import bus_pb2

# The state each request leads to.
TARGETS = {"pause": "paused", "resume": "running", "cancel": "cancelled"}
CONTROL_MAXLEN = 10_000


async def request_control(redis: aioredis.Redis, job_id: str, kind: str) -> JobRecord:
    """Apply pause, resume or cancel to the job's record; TransitionRefused if its state does not allow it."""
    if kind not in TARGETS:
        raise ValueError(f"unknown control {kind!r}; one of {', '.join(TARGETS)}")
    message = "cancelled while queued" if kind == "cancel" else None
    job = await transition(redis, job_id, TARGETS[kind], message=message)
    if kind == "cancel":
        await redis.lrem(QUEUE, 0, job_id)  # a queued job must not be picked up later
    await publish(
        redis, JobKeys(job_id).control, [bus_pb2.ControlEvent(job_id=job_id, kind=kind)], CONTROL_MAXLEN
    )
    return job


async def set_knobs(redis: aioredis.Redis, job_id: str, knobs: dict) -> tuple[JobRecord, dict]:
    """Set live knobs ({name or dotted path: value}) in the job's spec, validated like the spec itself.

    SpecError names a bad knob or value; TransitionRefused if the job has ended. Returns the record
    and the knobs by dotted path.
    """
    dotted = {live_knob(str(k)): v for k, v in knobs.items()}

    def change(job: JobRecord) -> JobRecord:
        if job.state in FINAL_STATES:
            raise TransitionRefused(job_id, job.state, "re-specced")
        job.spec = job.spec.with_overrides(dotted)
        return job

    job = await update_job(redis, job_id, change)
    if job is None:
        raise KeyError(job_id)
    events = [
        bus_pb2.ControlEvent(job_id=job_id, kind="set", key=k, value=json.dumps(v)) for k, v in dotted.items()
    ]
    await publish(redis, JobKeys(job_id).control, events, CONTROL_MAXLEN)
    return job, dotted
