"""Dead letters of streams read without a consumer group (policy, control, evaluation results).

Such a stream has no pending list to ACK and every reader keeps its own cursor, so an entry a reader
cannot use stays where it is; what moves is its record: the dead-letter stream gets it once, from the
first reader that skips it, with that reader's reason. The job's `skipped` hash remembers which entries
were recorded, so readers that meet an entry again (a second pod, a restarted learner re-reading from
the start, a command re-sent after a lost reply) add nothing. These entries are no prompts of the job:
they count nothing in the flow hash.
"""

from __future__ import annotations

import logging
import time

import redis.asyncio as aioredis

from asympo.bus.dead_letters import DEAD_MAXLEN, MAX_PAYLOAD_BYTES
from asympo.bus.keys import JobKeys

log = logging.getLogger(__name__)

# A flood of garbage must not grow the hash without bound: past this many members it starts over, and
# an entry met again after that is recorded a second time, which is harmless.
SKIPPED_MAX = 10_000
# Readers meet the same entries again on every look (the policy stream's newest ones): asking Redis
# once per process is enough.
_MEMO_MAX = 4096

# KEYS: skipped hash, dead stream. ARGV: member, SKIPPED_MAX, DEAD_MAXLEN, then the record's fields.
_SKIP = """
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[2]) then redis.call('DEL', KEYS[1]) end
if redis.call('HSETNX', KEYS[1], ARGV[1], '1') == 0 then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
return 1
"""


class SkipLog:
    """What one reader skipped on plain streams, recorded in the job's dead-letter stream (each entry once)."""

    def __init__(self, redis: aioredis.Redis, reader: str):
        self.redis = redis
        self.reader = reader
        self.recorded = 0  # dead letters this reader wrote (not those others wrote first)
        self._seen: dict[tuple[str, str], None] = {}

    def seen(self, stream: str, entry_id: str) -> bool:
        """Whether this reader already skipped the entry."""
        return (stream, entry_id) in self._seen

    async def put(self, keys: JobKeys, stream: str, entry_id: str, fields, reason: str) -> bool:
        """Record the entry of `stream` and the reason it is skipped, unless it is recorded already; True
        if this call wrote the record."""
        if self.seen(stream, entry_id):
            return False
        raw = {
            (k.decode(errors="replace") if isinstance(k, bytes) else k): v for k, v in (fields or {}).items()
        }
        pb = raw.get("pb", b"")
        record = {"stream": stream, "group": "", "consumer": self.reader, "entry_id": entry_id,
                  "reason": reason, "at": f"{time.time():.3f}", "counted": "", "pb": pb[:MAX_PAYLOAD_BYTES],
                  "v": raw.get("v", b"")}  # fmt: skip
        if len(pb) > MAX_PAYLOAD_BYTES:
            record["pb_bytes"], record["truncated"] = str(len(pb)), "1"
        fields = [x for kv in record.items() for x in kv]
        wrote = await self.redis.eval(
            _SKIP, 2, keys.skipped, keys.dead, f"{stream} {entry_id}", SKIPPED_MAX, DEAD_MAXLEN, *fields
        )
        if len(self._seen) >= _MEMO_MAX:
            self._seen.pop(next(iter(self._seen)))
        self._seen[(stream, entry_id)] = None
        if int(wrote):
            self.recorded += 1
            log.warning("dead-lettered an entry of %s", stream,
                        extra={"entry": entry_id, "reason": reason, "reader": self.reader})  # fmt: skip
        return bool(int(wrote))
