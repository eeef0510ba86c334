"""Steering a job: POST /v1/jobs/{job_id}:pause, :resume, :cancel and PATCH /v1/jobs/{job_id} (live knobs)."""

from __future__ import annotations

import json

import redis.asyncio as aioredis
from fastapi import HTTPException, Request

from asympo.bus import QUEUE, JobKeys, publish
from asympo.jobs.records import FINAL_STATES, put_job
from asympo.jobs.spec import SpecError, live_knob
from asympo.proto.v1 import bus_pb2

from ..body import problem_list, read_body
from ..deps import RedisDep, existing_job, v1_router

router = v1_router()


async def _control(redis: aioredis.Redis, job_id: str, kind: str) -> dict:
    record = await existing_job(redis, job_id)
    if record.state in FINAL_STATES:
        raise HTTPException(409, f"job {job_id} already {record.state}")
    if kind == "cancel" and record.state == "queued":
        # No learner has it yet: take it out of the queue here.
        await redis.lrem(QUEUE, 0, job_id)
        record.state, record.message = "cancelled", "cancelled while queued"
        await put_job(redis, record)
    elif kind in ("pause", "resume") and record.state == "queued":
        raise HTTPException(409, f"job {job_id} is queued: only cancel applies")
    else:
        await publish(redis, JobKeys(job_id).control, [bus_pb2.ControlEvent(job_id=job_id, kind=kind)])
    return {"job_id": job_id, "requested": kind, "state": record.state}


@router.post("/jobs/{job_id}:pause", status_code=202)
async def pause(job_id: str, redis: RedisDep) -> dict:
    """Ask the learner to pause after the step in progress."""
    return await _control(redis, job_id, "pause")


@router.post("/jobs/{job_id}:resume", status_code=202)
async def resume(job_id: str, redis: RedisDep) -> dict:
    """Ask the learner to resume a paused job."""
    return await _control(redis, job_id, "resume")


@router.post("/jobs/{job_id}:cancel", status_code=202)
async def cancel(job_id: str, redis: RedisDep) -> dict:
    """Cancel a job (at once when queued; after the step in progress when running)."""
    return await _control(redis, job_id, "cancel")


@router.patch("/jobs/{job_id}", status_code=202)
async def knobs(job_id: str, request: Request, redis: RedisDep) -> dict:
    """Change live knobs, e.g. {"max_staleness": 0, "temperature": 0.8}; validated like the spec."""
    record = await existing_job(redis, job_id)
    data = await read_body(request)
    if not isinstance(data, dict) or not data:
        raise HTTPException(
            422, {"problems": [{"field": "(body)", "error": "send an object of knob: value"}]}
        )
    try:
        dotted = {live_knob(str(k)): v for k, v in data.items()}
        updated = record.spec.with_overrides(dotted)
    except SpecError as exc:
        raise HTTPException(422, {"problems": problem_list(exc.problems)}) from None
    if record.state in FINAL_STATES:
        raise HTTPException(409, f"job {job_id} already {record.state}")
    if record.state == "queued":
        record.spec = updated  # not started: the learner reads it from the record
        await put_job(redis, record)
    else:
        events = [bus_pb2.ControlEvent(job_id=job_id, kind="set", key=k, value=json.dumps(v))
                  for k, v in dotted.items()]  # fmt: skip
        await publish(redis, JobKeys(job_id).control, events)
    return {"job_id": job_id, "requested": dotted, "state": record.state}
