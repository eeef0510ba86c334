"""Steering a job: POST /v1/jobs/{job_id}:pause, :resume, :cancel and PATCH /v1/jobs/{job_id} (live knobs).

Each request changes the job record itself through the state machine (asympo.jobs.control), so it holds
whether or not a learner is running the job right now.
"""

from __future__ import annotations

from fastapi import HTTPException, Request

from asympo.jobs.control import request_control, set_knobs
from asympo.jobs.records import FINAL_STATES
from asympo.jobs.spec import SpecError
from asympo.jobs.states import TransitionRefused

from ..body import problem_list, read_body
from ..deps import RedisDep, existing_job, v1_router
from ..openapi_bodies import knobs_body

router = v1_router()


def _refused(job_id: str, exc: TransitionRefused, kind: str) -> HTTPException:
    if exc.current in FINAL_STATES:
        return HTTPException(409, f"job {job_id} already {exc.current}")
    if exc.current == "queued":
        return HTTPException(409, f"job {job_id} is queued: only cancel applies")
    return HTTPException(409, f"job {job_id} is {exc.current}: {kind} does not apply")


async def _control(redis, job_id: str, kind: str) -> dict:
    await existing_job(redis, job_id)
    try:
        job = await request_control(redis, job_id, kind)
    except TransitionRefused as exc:
        raise _refused(job_id, exc, kind) from None
    return {"job_id": job_id, "requested": kind, "state": job.state}


@router.post("/jobs/{job_id}:pause", status_code=202)
async def pause(job_id: str, redis: RedisDep) -> dict:
    """Pause a job: the learner stops after the step in progress (a starting job starts paused)."""
    return await _control(redis, job_id, "pause")


@router.post("/jobs/{job_id}:resume", status_code=202)
async def resume(job_id: str, redis: RedisDep) -> dict:
    """Resume a paused job."""
    return await _control(redis, job_id, "resume")


@router.post("/jobs/{job_id}:cancel", status_code=202)
async def cancel(job_id: str, redis: RedisDep) -> dict:
    """Cancel a job (a running one ends after the step in progress)."""
    return await _control(redis, job_id, "cancel")


@router.patch("/jobs/{job_id}", status_code=202, openapi_extra=knobs_body())
async def knobs(job_id: str, request: Request, redis: RedisDep) -> dict:
    """Change live knobs, e.g. {"max_staleness": 0, "temperature": 0.8}; validated like the spec."""
    await existing_job(redis, job_id)
    data = await read_body(request)
    if not isinstance(data, dict) or not data:
        raise HTTPException(
            422, {"problems": [{"field": "(body)", "error": "send an object of knob: value"}]}
        )
    try:
        job, dotted = await set_knobs(redis, job_id, data)
    except SpecError as exc:
        raise HTTPException(422, {"problems": problem_list(exc.problems)}) from None
    except TransitionRefused as exc:
        raise _refused(job_id, exc, "a knob change") from None
    return {"job_id": job_id, "requested": dotted, "state": job.state}
