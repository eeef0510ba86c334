"""The learner's job-scoped de-duplication set: a prompt_id is trained on at most once."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from asympo.bus.keys import JobKeys


class SeenPrompts:
    """Set of consumed prompt_ids in Redis (`asympo:{job}:seen`)."""

    def __init__(self, redis: aioredis.Redis, keys: JobKeys):
        self.redis = redis
        self.key = keys.seen

    async def claim(self, prompt_ids: Sequence[str]) -> list[bool]:
        """Mark prompt_ids as consumed; True for each one seen for the first time (SADD is atomic)."""
        if not prompt_ids:
            return []
        async with self.redis.pipeline(transaction=True) as pipe:
            for pid in prompt_ids:
                pipe.sadd(self.key, pid)
            return [bool(added) for added in await pipe.execute()]

    async def release(self, prompt_ids: Sequence[str]) -> None:
        """Forget prompt_ids (a claimed batch that was not trained after all, e.g. the step failed)."""
        if prompt_ids:
            await self.redis.srem(self.key, *prompt_ids)

    async def contains(self, prompt_id: str) -> bool:
        """Whether prompt_id was already consumed."""
        return bool(await self.redis.sismember(self.key, prompt_id))

    async def size(self) -> int:
        """How many prompt_ids were consumed."""
        return int(await self.redis.scard(self.key))
