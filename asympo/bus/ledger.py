"""The learner's ledger: every prompt it consumes ends in a committed step record or a drop record.

Each write below is one fenced script, so an ACK and what it accounts for happen together or not at
all, and a second run (redis-py re-sends a command whose reply was lost) changes nothing:

- `commit_step`: XACK the step's groups, count them `trained`, append the step record;
- `discard`: XACK groups that will not be trained, count them under their reason and append a drop
  record naming their prompt_ids (duplicates are counted apart: they are not prompts of their own);
- `roll_back`: delete the step records after the checkpoint a restarted learner resumed from, move
  their prompts from `trained` to `dropped:rolled_back` and record that, since those updates are gone;
- `close_flow`: at the end of a job, count prompts still in flight as `dropped:unused`.

A step record is what the learner trained; the steps stream after roll-backs is the job's history.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence

import redis.asyncio as aioredis
from google.protobuf.message import Message

from asympo.bus.codec import encode
from asympo.bus.fence import FENCE_CHECK, Fence, run_fenced
from asympo.bus.flow import IN_FLIGHT
from asympo.bus.keys import GROUP_LEARNER, JobKeys

STEPS_MAXLEN = 100_000

_COMMIT = (
    FENCE_CHECK
    + """
local n = redis.call('XACK', KEYS[2], ARGV[2], unpack(ARGV, 4))
if n == 0 then return 0 end
redis.call('HINCRBY', KEYS[3], 'trained', n)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100000, '*', 'json', ARGV[3])
return n
"""
)

# ARGV: token, group, reason, step, then (entry id, prompt id) pairs.
_DISCARD = (
    FENCE_CHECK
    + """
local prompts = {}
for i = 5, #ARGV, 2 do
  if redis.call('XACK', KEYS[2], ARGV[2], ARGV[i]) == 1 then prompts[#prompts + 1] = ARGV[i + 1] end
end
if #prompts == 0 then return 0 end
if ARGV[3] == 'duplicate' then
  redis.call('HINCRBY', KEYS[3], 'duplicates', #prompts)
else
  redis.call('HINCRBY', KEYS[3], 'dropped:' .. ARGV[3], #prompts)
end
redis.call('XADD', KEYS[4], '*', 'reason', ARGV[3], 'step', ARGV[4], 'prompt_ids', cjson.encode(prompts))
return #prompts
"""
)

# ARGV: token, the roll-back record, the rolled-back prompt_ids as JSON, their count, then record ids.
_ROLL_BACK = (
    FENCE_CHECK
    + """
local deleted = redis.call('XDEL', KEYS[2], unpack(ARGV, 5))
if deleted == 0 then return 0 end
local n = tonumber(ARGV[4])
if n > 0 then
  redis.call('HINCRBY', KEYS[3], 'trained', -n)
  redis.call('HINCRBY', KEYS[3], 'dropped:rolled_back', n)
  redis.call('XADD', KEYS[4], '*', 'reason', 'rolled_back', 'step', '', 'prompt_ids', ARGV[3])
end
redis.call('XADD', KEYS[2], '*', 'json', ARGV[2])
return deleted
"""
)

_CLOSE = (
    FENCE_CHECK
    + IN_FLIGHT
    + """
local open = in_flight(KEYS[2])
if open > 0 then redis.call('HINCRBY', KEYS[2], 'dropped:unused', open) end
return open
"""
)

# ARGV: token, maxlen, fields per entry, the call's op id, then each entry's fields. Every entry carries
# the op id, so a re-sent call finds its entries among the newest ones and returns their ids instead of
# appending them again (a version announced twice would break the gap-free version history).
_APPEND = (
    FENCE_CHECK
    + """
local done = {}
for _, e in ipairs(redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 64)) do
  local f = e[2]
  if f[1] == 'op' and f[2] == ARGV[4] then table.insert(done, 1, e[1]) end
end
if #done > 0 then return done end
local per = tonumber(ARGV[3]) * 2
local ids = {}
for i = 5, #ARGV, per do
  ids[#ids + 1] = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'op', ARGV[4],
                             unpack(ARGV, i, i + per - 1))
end
return ids
"""
)


class Ledger:
    """The fenced writes of one learner to one job's streams and counters."""

    def __init__(self, redis: aioredis.Redis, keys: JobKeys, fence: Fence | None = None):
        self.redis = redis
        self.keys = keys
        self.fence = fence or Fence.none(keys.lease)

    async def commit_step(self, entry_ids: Sequence[str], record: dict) -> int:
        """ACK a step's groups, count them trained and append its record, atomically; returns the ACK count
        (0: the step was already committed)."""
        k = self.keys
        return int(
            await run_fenced(
                self.redis,
                _COMMIT,
                self.fence,
                [k.groups, k.flow, k.steps],
                [GROUP_LEARNER, json.dumps(record), *entry_ids],
            )  # fmt: skip
        )

    async def discard(self, entries: Sequence[tuple[str, str]], reason: str, step: int) -> int:
        """ACK (entry_id, prompt_id) groups that will not be trained, count and record them under `reason`;
        returns how many were still pending (only those count)."""
        if not entries:
            return 0
        k = self.keys
        args = [GROUP_LEARNER, reason, step, *(x for pair in entries for x in pair)]
        return int(await run_fenced(self.redis, _DISCARD, self.fence, [k.groups, k.flow, k.drops], args))

    async def roll_back(self, record_ids: Sequence[str], prompt_ids: Sequence[str], record: dict) -> int:
        """Delete superseded step records, move their prompts to dropped:rolled_back, append `record`."""
        if not record_ids:
            return 0
        k = self.keys
        args = [json.dumps(record), json.dumps(list(prompt_ids)), len(prompt_ids), *record_ids]
        return int(await run_fenced(self.redis, _ROLL_BACK, self.fence, [k.steps, k.flow, k.drops], args))

    async def close_flow(self) -> int:
        """Count what is still in flight as dropped:unused (the job is over); returns that number."""
        return int(await run_fenced(self.redis, _CLOSE, self.fence, [self.keys.flow], []))

    async def append_record(self, record: dict) -> str:
        """Append a record (evaluation, start, end) to the steps stream."""
        args = [STEPS_MAXLEN, 1, uuid.uuid4().hex, "json", json.dumps(record)]
        ids = await run_fenced(self.redis, _APPEND, self.fence, [self.keys.steps], args)
        return _text(ids[0])

    async def publish(self, stream: str, messages: Sequence[Message], maxlen: int = 100_000) -> list[str]:
        """XADD bus messages (policy versions, evaluation tasks) as this learner, once even if re-sent."""
        fields = [x for m in messages for kv in encode(m).items() for x in kv]
        ids = await run_fenced(
            self.redis, _APPEND, self.fence, [stream], [maxlen, 2, uuid.uuid4().hex, *fields]
        )
        return [_text(i) for i in ids]


async def drop_records(redis: aioredis.Redis, keys: JobKeys) -> list[dict]:
    """Every drop record of the job: reason, step and prompt_ids, oldest first."""
    out = []
    for entry_id, fields in await redis.xrange(keys.drops):
        f = {_text(a): _text(b) for a, b in fields.items()}
        out.append({"id": _text(entry_id), "reason": f["reason"], "step": f["step"],
                    "prompt_ids": json.loads(f["prompt_ids"])})  # fmt: skip
    return out


def _text(raw) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
