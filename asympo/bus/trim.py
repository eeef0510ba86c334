"""Trimming what a consumer group is done with, so a job's streams hold only work still in progress.

An entry of a consumer-group stream is done once the group has been handed it and ACKed it: it is
older than the group's last-delivered id and not in the pending list. The cut is therefore the oldest
pending id (or, with nothing pending, just past the last-delivered id), and XTRIM MINID removes exactly
the entries before it. Unlike MAXLEN, this never drops an entry someone still has to work on. The
learner owns the cut: it trims the prompts, groups and evaluation streams of its job as it goes.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from asympo.bus.fence import FENCE_CHECK, Fence, run_fenced

_TRIM = (
    FENCE_CHECK
    + """
redis.replicate_commands()
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local last = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  if info['name'] == ARGV[2] then last = info['last-delivered-id'] end
end
if not last then return 0 end
local pending = redis.call('XPENDING', KEYS[2], ARGV[2])
local cut = pending[2]
if not cut then
  local ms, seq = string.match(last, '(%d+)-(%d+)')
  cut = ms .. '-' .. (tonumber(seq) + 1)
end
return redis.call('XTRIM', KEYS[2], 'MINID', cut)
"""
)


async def trim_consumed(redis: aioredis.Redis, stream: str, group: str, fence: Fence) -> int:
    """Remove the entries `group` has finished with from `stream`; returns how many went."""
    return int(await run_fenced(redis, _TRIM, fence, [stream], [group]))
