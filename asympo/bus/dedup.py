"""The learner's de-duplication claims: a prompt_id is trained on at most once.

A claim maps a prompt_id to the groups-stream entry that first brought it (`asympo:{job}:claims`), so
claiming is idempotent: the same entry claiming again (a re-sent script, a group recovered after a
restart) is still the first, while a second group for the prompt is a duplicate. Pods cannot produce
one (a group is published only by the XACK that removes its task from the pending list), so duplicates
are replays by other writers, and a replay carries the generation version g of the group it copies,
which is at most the version c the original was claimed at. Once the learner is past c + max_staleness
such a replay is dropped as stale anyway, so claims older than that are pruned.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from asympo.bus.fence import FENCE_CHECK, Fence, run_fenced
from asympo.bus.keys import JobKeys

_CLAIM = (
    FENCE_CHECK
    + """
local out = {}
for i = 3, #ARGV, 2 do
  local prompt, entry = ARGV[i], ARGV[i + 1]
  local owner = redis.call('HGET', KEYS[2], prompt)
  if not owner then
    redis.call('HSET', KEYS[2], prompt, entry)
    redis.call('ZADD', KEYS[3], ARGV[2], prompt)
    owner = entry
  end
  out[#out + 1] = owner == entry and 1 or 0
end
return out
"""
)

_PRUNE = (
    FENCE_CHECK
    + """
local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[2], 'LIMIT', 0, 5000)
if #old > 0 then
  redis.call('HDEL', KEYS[2], unpack(old))
  redis.call('ZREM', KEYS[3], unpack(old))
end
return #old
"""
)


class SeenPrompts:
    """Claims of prompt_ids by groups-stream entries, in Redis."""

    def __init__(self, redis: aioredis.Redis, keys: JobKeys, fence: Fence | None = None):
        self.redis = redis
        self.keys = keys
        self.fence = fence or Fence.none(keys.lease)

    async def claim(self, claims: Sequence[tuple[str, str]], version: int) -> list[bool]:
        """Claim (prompt_id, entry_id) pairs at policy `version`; True where the entry is the prompt's first."""
        if not claims:
            return []
        args = [version, *(x for pair in claims for x in pair)]
        owned = await run_fenced(
            self.redis, _CLAIM, self.fence, [self.keys.claims, self.keys.claim_ages], args
        )
        return [bool(int(x)) for x in owned]

    async def prune(self, before_version: int) -> int:
        """Forget claims made before `before_version` (at most a few thousand per call); returns how many."""
        return int(
            await run_fenced(
                self.redis, _PRUNE, self.fence, [self.keys.claims, self.keys.claim_ages], [before_version]
            )
        )

    async def owner(self, prompt_id: str) -> str | None:
        """The entry that claimed prompt_id, if any."""
        raw = await self.redis.hget(self.keys.claims, prompt_id)
        return raw.decode() if isinstance(raw, bytes) else raw

    async def size(self) -> int:
        """How many claims are kept."""
        return int(await self.redis.hlen(self.keys.claims))
