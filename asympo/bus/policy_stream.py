"""Reading the policy stream: which version of a job is the newest announced one."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from asympo.bus.codec import EntryError, decode
from asympo.bus.keys import JobKeys
from asympo.proto.v1 import bus_pb2

log = logging.getLogger(__name__)


async def newest_version(
    redis: aioredis.Redis, keys: JobKeys, scan: int = 20
) -> bus_pb2.PolicyVersion | None:
    """The newest readable PolicyVersion of the job (older ones are skipped: only the newest matters)."""
    for _, fields in await redis.xrevrange(keys.policy, count=scan):
        try:
            return decode(fields, bus_pb2.PolicyVersion, keys.job_id)
        except EntryError as exc:
            log.warning("unreadable PolicyVersion entry skipped", extra={"reason": exc.reason})
    return None
