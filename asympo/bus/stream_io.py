"""Plain stream writes and reads outside consumer groups: publishing, reading a whole stream, backlog size."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis
from google.protobuf.message import Message
from redis.exceptions import ResponseError

from asympo.bus.codec import decode, encode
from asympo.bus.connection import connect

DEFAULT_MAXLEN = 100_000


def _id(raw) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


async def publish(
    redis: aioredis.Redis, stream: str, messages: Sequence[Message], maxlen: int = DEFAULT_MAXLEN
) -> list[str]:
    """XADD messages in one transaction, trimming the stream to about maxlen entries."""
    async with redis.pipeline(transaction=True) as pipe:
        for message in messages:
            pipe.xadd(stream, encode(message), maxlen=maxlen, approximate=True)
        return [_id(i) for i in await pipe.execute()]


async def read_all(url: str, stream: str, message_type: type[Message]) -> list[Message]:
    """Every entry still on a stream, decoded, oldest first (for reports, benchmarks and tests)."""
    redis = connect(url)
    try:
        return [decode(f, message_type) for _, f in await redis.xrange(stream)]
    finally:
        await redis.aclose()


async def undelivered(redis: aioredis.Redis, stream: str, group: str, limit: int = 100_000) -> int:
    """How many entries of the stream the group has not been handed yet (at most `limit`)."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return 0  # no stream yet
    for g in groups:
        if _id(g["name"]) == group:
            last = _id(g["last-delivered-id"])
            return len(await redis.xrange(stream, min=f"({last}", max="+", count=limit))
    return await redis.xlen(stream)
