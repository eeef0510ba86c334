"""Admission-control counters: prompts dispatched but not yet consumed by the learner.

The dispatcher counts what it dispatches (in the same transaction as the XADD); the learner counts
what it consumes (trained or dropped as stale); dead-lettering counts what will never arrive. The
learner admits new prompts while in_flight ≤ (max_staleness + 1) × prompts_per_step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from google.protobuf.message import Message

from asympo.bus.codec import encode
from asympo.bus.keys import JobKeys
from asympo.bus.stream_io import DEFAULT_MAXLEN


@dataclass(frozen=True)
class Flow:
    """The counters of one job."""

    dispatched: int
    consumed: int
    dropped: int

    @property
    def in_flight(self) -> int:
        """Dispatched prompts whose groups the learner has not yet consumed."""
        return self.dispatched - self.consumed - self.dropped


def admission_limit(max_staleness: int, prompts_per_step: int) -> int:
    """The most prompts that may be in flight so no group starts more than max_staleness versions behind."""
    return (max_staleness + 1) * prompts_per_step


async def dispatch(
    redis: aioredis.Redis, keys: JobKeys, tasks: Sequence[Message], maxlen: int = DEFAULT_MAXLEN
) -> list[str]:
    """XADD PromptTasks and count them as dispatched, in one transaction."""
    async with redis.pipeline(transaction=True) as pipe:
        for task in tasks:
            pipe.xadd(keys.prompts, encode(task), maxlen=maxlen, approximate=True)
        pipe.hincrby(keys.flow, "dispatched", len(tasks))
        replies = await pipe.execute()
    return [r.decode() if isinstance(r, bytes) else str(r) for r in replies[: len(tasks)]]


async def mark_consumed(redis: aioredis.Redis, keys: JobKeys, n: int) -> None:
    """Count n groups as consumed by the learner (trained, or dropped as stale or duplicate)."""
    if n:
        await redis.hincrby(keys.flow, "consumed", n)


async def read_flow(redis: aioredis.Redis, keys: JobKeys) -> Flow:
    """The job's counters (zeros before the first dispatch)."""
    raw = await redis.hgetall(keys.flow)
    get = lambda name: int(raw.get(name.encode(), raw.get(name, 0)))  # noqa: E731
    return Flow(get("dispatched"), get("consumed"), get("dropped"))
