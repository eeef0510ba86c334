"""Following a plain stream (no consumer group) from a cursor: control events, evaluation results."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from google.protobuf.message import Message

from asympo.bus.codec import EntryError, decode

log = logging.getLogger(__name__)


class StreamFollower:
    """Every entry of `stream` after `cursor`, decoded into `message_type`; unreadable entries are skipped.

    Each reader keeps its own cursor, so any number of services can follow the same stream.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        stream: str,
        message_type: type[Message],
        job_id: str,
        cursor: str = "0-0",
    ):
        self.redis, self.stream, self.message_type, self.job_id = redis, stream, message_type, job_id
        self.cursor = cursor

    async def skip_to_end(self) -> None:
        """Start after the newest entry: only what is added from now on will be read."""
        last = await self.redis.xrevrange(self.stream, count=1)
        if last:
            self.cursor = _id(last[0][0])

    async def read(self, batch: int = 100) -> list[Message]:
        """Every readable entry added since the last call, oldest first."""
        out = []
        while reply := await self.redis.xread({self.stream: self.cursor}, count=batch):
            for _, entries in reply:
                for entry_id, fields in entries:
                    self.cursor = _id(entry_id)
                    try:
                        out.append(decode(fields, self.message_type, self.job_id))
                    except EntryError as exc:
                        log.warning(
                            "unreadable entry skipped", extra={"stream": self.stream, "reason": exc.reason}
                        )
        return out


def _id(raw) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
