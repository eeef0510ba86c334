"""Submitting, listing and reading jobs: POST and GET /v1/jobs, GET /v1/jobs/{job_id}."""

from __future__ import annotations

import hashlib
import json
import secrets
import time

from fastapi import Header, HTTPException, Request, Response

from asympo.bus import QUEUE, JobKeys
from asympo.jobs import verifier_catalog
from asympo.jobs.path_roots import PathNotAllowed, check_job_paths
from asympo.jobs.records import JobRecord, list_jobs
from asympo.jobs.spec import JobSpec, SpecError
from asympo.jobs.states import create_job

from ..body import problem_list, read_body
from ..deps import RedisDep, existing_job, v1_router
from ..openapi_bodies import job_spec_body

router = v1_router()


def _job_id(spec: JobSpec) -> str:
    # Readable (name and time) and, thanks to the random suffix, unique without asking Redis.
    stem = spec.name or "job"
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


# How long a retried POST with the same Idempotency-Key gets the job it created instead of a new one.
IDEMPOTENCY_TTL_S = 24 * 3600


@router.post("/jobs", status_code=201, openapi_extra=job_spec_body())
async def submit(
    request: Request,
    response: Response,
    redis: RedisDep,
    idempotency_key: str | None = Header(None, max_length=200),
) -> dict:
    """Validate a job spec (JSON or YAML) and queue it; with an Idempotency-Key, a retry gets the same job."""
    data = await read_body(request)
    try:
        spec = JobSpec.from_data(data, "request body")
    except SpecError as exc:
        raise HTTPException(422, {"problems": problem_list(exc.problems)}) from None
    try:
        check_job_paths(spec)
    except PathNotAllowed as exc:
        field, _, error = str(exc).partition(": ")
        raise HTTPException(422, {"problems": [{"field": field, "error": error}]}) from None
    # Checked against what the reward service published: its plugins are not importable here.
    unknown = await verifier_catalog.check(redis, spec.verifier)
    if unknown is not None:
        raise HTTPException(422, {"problems": [{"field": "verifier", "error": unknown}]})
    job = JobRecord(job_id=_job_id(spec), spec=spec)
    # Hashed: the header is the client's text, the Redis key must be ours.
    key = hashlib.sha256(idempotency_key.encode()).hexdigest() if idempotency_key else ""
    fingerprint = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:32]
    try:
        job, created = await create_job(redis, job, key, fingerprint, IDEMPOTENCY_TTL_S)
    except ValueError as exc:
        raise HTTPException(422, {"problems": [{"field": "Idempotency-Key", "error": str(exc)}]}) from None
    if not created:
        response.status_code = 200  # the job this key created earlier, unchanged
    return job.model_dump(mode="json")


@router.get("/jobs")
async def jobs(redis: RedisDep, state: str | None = None) -> list[dict]:
    """All jobs, oldest first (optionally one state), without their specs."""
    records = await list_jobs(redis)
    return [r.model_dump(mode="json", exclude={"spec"}) | {"name": r.spec.name}
            for r in records if state is None or r.state == state]  # fmt: skip


@router.get("/jobs/{job_id}")
async def job(job_id: str, redis: RedisDep) -> dict:
    """A job with its spec, its newest step record and its queue position."""
    record = await existing_job(redis, job_id)
    out = record.model_dump(mode="json")
    recent = [json.loads(f[b"json"]) for _, f in await redis.xrevrange(JobKeys(job_id).steps, count=50)]
    out["last_step"] = recent[0] if recent else None
    # Evaluations on the pods are records of their own, often followed at once by a training step.
    out["last_eval"] = next((rec for rec in recent if rec.get("heldout_accuracy") is not None), None)
    if record.state == "queued":
        queue = [x.decode() for x in await redis.lrange(QUEUE, 0, -1)]
        out["queue_position"] = queue.index(job_id) if job_id in queue else None
    return out
