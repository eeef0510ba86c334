"""What happens to a job's data once it has ended: its report is kept, its streams expire.

`finish_job` computes the job's summary from its records, writes the records and summary as files
(where the learner keeps its checkpoints) and into the job record, and only then gives every key of
the job a TTL of `retention_s`. The job record itself (spec, state, summary; a few KB) stays. Keys
with a TTL are the only ones the deployment's Redis (`maxmemory-policy volatile-lru`) may evict under
memory pressure, so an active job's state never is.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import redis.asyncio as aioredis

from asympo.bus.codec import EntryError, decode
from asympo.bus.fence import Fence
from asympo.bus.keys import JobKeys
from asympo.jobs.records import FINAL_STATES, JobRecord, list_jobs
from asympo.jobs.states import update_job
from asympo.jobs.summary import summarize
from asympo.jobs.values import json_safe
from asympo.proto.v1 import bus_pb2

log = logging.getLogger(__name__)


async def job_records(redis: aioredis.Redis, keys: JobKeys) -> list[dict]:
    """The job's step, evaluation and roll-back records, oldest first."""
    return [json.loads(f[b"json"]) for _, f in await redis.xrange(keys.steps)]


async def _versions(redis: aioredis.Redis, keys: JobKeys) -> list[dict]:
    out = []
    for _, fields in await redis.xrange(keys.policy):
        try:
            pv = decode(fields, bus_pb2.PolicyVersion, keys.job_id)
        except EntryError:
            continue
        out.append({"version": pv.version, "step": pv.step, "created_at": pv.created_at})
    return out


async def finish_job(
    redis: aioredis.Redis,
    job: JobRecord,
    retention_s: float,
    archive: Path | None = None,
    fence: Fence | None = None,
) -> JobRecord | None:
    """Store an ended job's report, then let its keys expire after retention_s; returns the record."""
    keys = JobKeys(job.job_id)
    records = await job_records(redis, keys)
    summary = json_safe(summarize(job.model_dump(mode="json"), records, await _versions(redis, keys)))
    if archive is not None:
        archive.mkdir(parents=True, exist_ok=True)
        (archive / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (archive / "summary.json").write_text(json.dumps(summary, indent=1))
        summary["archive"] = str(archive)
    expires_at = time.time() + retention_s

    def change(record: JobRecord) -> JobRecord:
        record.report, record.expires_at = summary, expires_at
        return record

    stored = await update_job(redis, job.job_id, change, fence=fence)
    async with redis.pipeline(transaction=True) as pipe:
        for key in keys.all():
            pipe.expire(key, max(1, int(retention_s)))
        await pipe.execute()
    log.info("job report stored; its streams expire", extra={"job": job.job_id, "retention_s": retention_s})
    return stored


async def finish_ended_jobs(
    redis: aioredis.Redis, retention_s: float, archive_root: Path | None = None
) -> int:
    """Finish every ended job that has no report yet (its learner died before storing it); returns how many."""
    done = 0
    for job in await list_jobs(redis):
        if job.state in FINAL_STATES and job.expires_at is None:
            archive = archive_root / job.job_id / "report" if archive_root is not None else None
            await finish_job(redis, job, retention_s, archive)
            done += 1
    return done
