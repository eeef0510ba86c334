"""JSON records kept in Redis hashes: jobs (`asympo:jobs`) and rollout pods (`asympo:{job}:pods`)."""

from __future__ import annotations

import time
from typing import Literal

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from asympo.bus.keys import JOBS, JobKeys
from asympo.jobs.spec import JobSpec

JobState = Literal["queued", "starting", "running", "paused", "succeeded", "failed", "cancelled"]
ACTIVE_STATES = ("starting", "running", "paused")
FINAL_STATES = ("succeeded", "failed", "cancelled")


class JobRecord(BaseModel):
    """A job: its spec and lifecycle state (queued → starting → running ⇄ paused → succeeded | failed | cancelled)."""

    model_config = ConfigDict(extra="ignore")  # newer writers may add fields; older readers skip them

    job_id: str
    spec: JobSpec
    state: JobState = "queued"
    message: str = ""
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    step: int = 0
    version: int = 0
    # Set once the job has ended: its summary (asympo.jobs.summary), and when its streams expire.
    report: dict | None = None
    expires_at: float | None = None


class PodStatus(BaseModel):
    """What a rollout pod reports about itself; the learner and gateway count it updated only from this."""

    model_config = ConfigDict(extra="ignore")

    pod: str
    job_id: str
    engine: str
    state: Literal["loading", "serving", "paused", "reloading", "unhealthy", "stopped"] = "loading"
    served_version: int = -1
    weights_sha256: str = ""
    tokens_per_s: float = 0.0
    groups_published: int = 0
    reload_failures: int = 0
    last_error: str = ""
    heartbeat: float = Field(default_factory=time.time)


async def get_job(redis: aioredis.Redis, job_id: str) -> JobRecord | None:
    """The job's record, or None if there is none (or it cannot be read)."""
    raw = await redis.hget(JOBS, job_id)
    return _parse_job(raw)


async def put_job(redis: aioredis.Redis, record: JobRecord) -> None:
    """Write a job's record (updated_at is set now)."""
    record.updated_at = time.time()
    await redis.hset(JOBS, record.job_id, record.model_dump_json())


async def list_jobs(redis: aioredis.Redis) -> list[JobRecord]:
    """All readable job records, oldest first."""
    records = [_parse_job(raw) for raw in (await redis.hgetall(JOBS)).values()]
    return sorted((r for r in records if r), key=lambda r: r.created_at)


async def active_job(redis: aioredis.Redis) -> JobRecord | None:
    """The job being worked on (starting, running or paused); one at a time per deployment."""
    active = [r for r in await list_jobs(redis) if r.state in ACTIVE_STATES]
    return active[0] if active else None


def _parse_job(raw) -> JobRecord | None:
    if raw is None:
        return None
    try:
        return JobRecord.model_validate_json(raw)
    except ValidationError:
        return None


async def put_pod(redis: aioredis.Redis, status: PodStatus) -> None:
    """Write a pod's status with a fresh heartbeat."""
    status.heartbeat = time.time()
    await redis.hset(JobKeys(status.job_id).pods, status.pod, status.model_dump_json())


async def list_pods(redis: aioredis.Redis, job_id: str, max_age_s: float | None = None) -> list[PodStatus]:
    """The job's pods, optionally only those whose heartbeat is younger than max_age_s."""
    out = []
    now = time.time()
    for raw in (await redis.hgetall(JobKeys(job_id).pods)).values():
        try:
            status = PodStatus.model_validate_json(raw)
        except ValidationError:
            continue
        if max_age_s is None or now - status.heartbeat <= max_age_s:
            out.append(status)
    return sorted(out, key=lambda s: s.pod)
