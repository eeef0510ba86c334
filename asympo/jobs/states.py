"""The job state machine and compare-and-set updates of job records, shared by gateway, learner and pods.

    queued → starting → running ⇄ paused → succeeded | failed | cancelled

A record changes only through `update_job`: read it, compute the new record, and write it with a
script that succeeds only if the stored record is still the one read (and, for a learner, only while
its lease token is current). A writer that loses the race reads again and decides again, so a cancel
that arrives while the learner is starting the job is never overwritten, and a transition re-run
after a lost reply finds its own result and counts as done.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio as aioredis

from asympo.bus.fence import FENCE_CHECK, Fence, run_fenced
from asympo.bus.keys import JOBS, QUEUE, JobKeys
from asympo.jobs.records import FINAL_STATES, JobRecord, get_job, list_jobs

# Which states each state may move to; anything else is refused.
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"starting", "cancelled", "failed"}),
    "starting": frozenset({"running", "paused", "cancelled", "failed"}),
    "running": frozenset({"paused", "succeeded", "failed", "cancelled"}),
    "paused": frozenset({"running", "cancelled", "failed"}),
    **{state: frozenset() for state in FINAL_STATES},
}

_CAS = (
    FENCE_CHECK
    + """
local current = redis.call('HGET', KEYS[2], ARGV[2])
if current ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
if ARGV[5] ~= '' then redis.call('RPUSH', KEYS[3], ARGV[2]) end
return 1
"""
)

_CREATE = """
local existing = redis.call('GET', KEYS[3])
if existing then return existing end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return redis.error_reply('EXISTS job ' .. ARGV[1]) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[1])
if KEYS[3] ~= '' then redis.call('SET', KEYS[3], ARGV[3], 'EX', tonumber(ARGV[4])) end
return false
"""


class TransitionRefused(RuntimeError):
    """The job is in a state from which the requested one cannot be reached."""

    def __init__(self, job_id: str, current: str, wanted: str):
        super().__init__(f"job {job_id} is {current}: it cannot become {wanted}")
        self.current = current


def can_move(current: str, to: str) -> bool:
    """Whether the state machine allows current → to."""
    return to in TRANSITIONS.get(current, frozenset())


async def update_job(
    redis: aioredis.Redis,
    job_id: str,
    change: Callable[[JobRecord], JobRecord | None],
    *,
    fence: Fence | None = None,
    requeue: bool = False,
) -> JobRecord | None:
    """Apply `change` to the stored record with compare-and-set, retrying on conflict.

    `change` gets a copy of the current record and returns the new one, or None to leave it as it is
    (the function then returns the current record). Returns None if the job does not exist.
    `requeue` also appends the job to the queue in the same atomic write.
    """
    fence = fence or Fence.none(JobKeys(job_id).lease)
    while True:
        raw = await redis.hget(JOBS, job_id)
        if raw is None:
            return None
        current = JobRecord.model_validate_json(raw)
        new = change(current.model_copy(deep=True))
        if new is None:
            return current
        new.updated_at = time.time()
        done = await run_fenced(
            redis, _CAS, fence, [JOBS, QUEUE], [job_id, raw, new.model_dump_json(), "1" if requeue else ""]
        )
        if int(done):
            return new


async def transition(
    redis: aioredis.Redis,
    job_id: str,
    to: str,
    *,
    message: str | None = None,
    only_from: frozenset[str] | set[str] | None = None,
    fence: Fence | None = None,
    **fields,
) -> JobRecord:
    """Move a job to state `to` (with message and other fields such as step); idempotent.

    Already in `to`: done, nothing written. `only_from` narrows the states accepted as a start (a
    learner finishing a job accepts only `running`). TransitionRefused otherwise; KeyError if the job
    does not exist.
    """

    def change(job: JobRecord) -> JobRecord | None:
        if job.state == to:
            return None
        if not can_move(job.state, to) or (only_from is not None and job.state not in only_from):
            raise TransitionRefused(job_id, job.state, to)
        job.state = to
        if message is not None:
            job.message = message
        for name, value in fields.items():
            setattr(job, name, value)
        return job

    job = await update_job(redis, job_id, change, fence=fence)
    if job is None:
        raise KeyError(job_id)
    return job


async def create_job(
    redis: aioredis.Redis,
    job: JobRecord,
    idempotency_key: str = "",
    fingerprint: str = "",
    ttl_s: int = 86400,
) -> tuple[JobRecord, bool]:
    """Store a new queued job and enqueue it atomically; (the job, True) or, for a repeated
    idempotency key, (the job that key created, False).

    `fingerprint` identifies the request: the same key with a different request is a ValueError.
    """
    key = f"asympo:idempotency:{idempotency_key}" if idempotency_key else ""
    earlier = await redis.eval(
        _CREATE, 3, JOBS, QUEUE, key, job.job_id, job.model_dump_json(), f"{job.job_id} {fingerprint}", ttl_s
    )
    if earlier is None:
        return job, True
    job_id, _, earlier_print = (earlier.decode() if isinstance(earlier, bytes) else earlier).partition(" ")
    if earlier_print != fingerprint:
        raise ValueError("this Idempotency-Key was used for a different request")
    stored = await get_job(redis, job_id)
    if stored is None:
        raise ValueError(f"this Idempotency-Key created job {job_id}, which no longer exists")
    return stored, False


async def requeue_lost(redis: aioredis.Redis) -> list[str]:
    """Put back in the queue every queued job that is not in it (written by an older release, or a
    queue entry lost with a Redis that lost writes); returns their ids."""
    queued = {x.decode() if isinstance(x, bytes) else x for x in await redis.lrange(QUEUE, 0, -1)}
    lost = [
        job.job_id for job in await list_jobs(redis) if job.state == "queued" and job.job_id not in queued
    ]
    if lost:
        await redis.rpush(QUEUE, *lost)
    return lost
