"""What a job reports while it runs: step records, published policy versions, rollout pods."""

from __future__ import annotations

import json

from fastapi import Query

from asympo.bus import EntryError, JobKeys, decode
from asympo.jobs.records import active_job, list_pods
from asympo.proto.v1 import bus_pb2

from ..deps import RedisDep, SettingsDep, existing_job, v1_router

# Pods heartbeat every few seconds; two minutes of silence means gone, not slow.
POD_MAX_AGE_S = 120.0

router = v1_router()


@router.get("/jobs/{job_id}/metrics")
async def step_metrics(
    job_id: str, redis: RedisDep, settings: SettingsDep, last: int = Query(100, ge=1)
) -> list[dict]:
    """The newest `last` step records, oldest first."""
    await existing_job(redis, job_id)
    entries = await redis.xrevrange(JobKeys(job_id).steps, count=min(last, settings.metrics_limit))
    out = []
    for _, fields in reversed(entries):
        try:
            out.append(json.loads(fields[b"json"]))
        except (KeyError, ValueError):
            continue
    return out


@router.get("/jobs/{job_id}/versions")
async def versions(job_id: str, redis: RedisDep, last: int = Query(100, ge=1, le=10_000)) -> list[dict]:
    """The newest published policy versions, oldest first."""
    await existing_job(redis, job_id)
    out = []
    for _, fields in reversed(await redis.xrevrange(JobKeys(job_id).policy, count=last)):
        try:
            pv = decode(fields, bus_pb2.PolicyVersion, job_id)
        except EntryError:
            continue
        out.append({"version": pv.version, "step": pv.step, "uri": pv.uri, "sha256": pv.sha256,
                    "bytes": pv.bytes, "created_at": pv.created_at})  # fmt: skip
    return out


@router.get("/pods")
async def pods(redis: RedisDep, job: str | None = None, max_age_s: float = POD_MAX_AGE_S) -> list[dict]:
    """Rollout pods of a job (default: the active one) with a heartbeat younger than max_age_s."""
    if job is None:
        active = await active_job(redis)
        if active is None:
            return []
        job = active.job_id
    else:
        await existing_job(redis, job)
    return [p.model_dump(mode="json") for p in await list_pods(redis, job, max_age_s)]
