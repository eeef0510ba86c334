"""Reading the policy stream: which version of a job is the newest announced one."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable

import redis.asyncio as aioredis

from asympo.bus.codec import EntryError, decode, encode
from asympo.bus.keys import JobKeys
from asympo.bus.skipped import SkipLog
from asympo.proto.v1 import bus_pb2

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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


def version_problem(pv: bus_pb2.PolicyVersion) -> str | None:
    """What makes an announcement unusable before any weights are looked at, or None."""
    if pv.version < 0:
        return f"negative version {pv.version}"
    if not _SHA256.match(pv.sha256):
        return f"sha256 {pv.sha256[:80]!r} is not a hex SHA-256 digest"
    if not pv.uri:
        return "no uri"
    if pv.bytes < 0 or pv.step < 0 or not math.isfinite(pv.created_at):
        return f"bytes {pv.bytes}, step {pv.step} or created_at {pv.created_at} out of range"
    return None


class PolicyReader:
    """Follows one job's policy stream for a pod: every entry is looked at once, what cannot be used is
    dead-lettered (unreadable or malformed entries, and versions the pod refuses), and the newest usable
    announcement is the answer.

    The newest one the caller still wants, not merely the last: a well-formed announcement of weights that
    do not exist or do not match would otherwise hide every real version published before it until the
    learner publishes again, and a learner whose groups all come back stale from a pod stuck behind
    never does. An announcement refused `MAX_REFUSALS` times is given up.
    """

    MAX_REFUSALS = 5
    MAX_CANDIDATES = 256

    def __init__(self, redis: aioredis.Redis, reader: str, scan: int = 100):
        self.redis, self.scan = redis, scan
        self.skips = SkipLog(redis, reader)
        self._job: str | None = None
        self._cursor = "0-0"
        # entry id → announcement, oldest first; and how often each was refused
        self._candidates: dict[str, bus_pb2.PolicyVersion] = {}
        self._refusals: dict[str, int] = {}

    async def newest(
        self, keys: JobKeys, wanted: Callable[[bus_pb2.PolicyVersion], bool] | None = None
    ) -> bus_pb2.PolicyVersion | None:
        """The newest usable announcement of the job that `wanted` accepts (None if there is none)."""
        if self._job != keys.job_id:
            # History before this reader started: only its newest entries can matter.
            self._job, self._cursor, self._candidates, self._refusals = keys.job_id, "0-0", {}, {}
            await self._look(keys, reversed(await self.redis.xrevrange(keys.policy, count=self.scan)))
        while reply := await self.redis.xread({keys.policy: self._cursor}, count=100):
            await self._look(keys, reply[0][1])
        for pv in reversed(self._candidates.values()):
            if wanted is None or wanted(pv):
                return pv
        return None

    async def refuse(self, keys: JobKeys, pv: bus_pb2.PolicyVersion, reason: str) -> None:
        """Dead-letter the entry that announced `pv` (once), with why this pod will not serve it."""
        for entry_id, candidate in list(self._candidates.items()):
            if candidate == pv:
                await self.skips.put(keys, keys.policy, entry_id, encode(pv), f"version refused: {reason}")
                self._refusals[entry_id] = self._refusals.get(entry_id, 0) + 1
                if self._refusals[entry_id] >= self.MAX_REFUSALS:
                    del self._candidates[entry_id], self._refusals[entry_id]

    async def _look(self, keys: JobKeys, entries) -> None:
        for raw_id, fields in entries:
            entry_id = self._cursor = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            try:
                pv = decode(fields, bus_pb2.PolicyVersion, keys.job_id)
                reason = version_problem(pv)
            except EntryError as exc:
                reason = exc.reason
            if reason:
                await self.skips.put(keys, keys.policy, entry_id, fields, reason)
                continue
            self._candidates[entry_id] = pv
            if len(self._candidates) > self.MAX_CANDIDATES:
                oldest = next(iter(self._candidates))
                del self._candidates[oldest]
                self._refusals.pop(oldest, None)
