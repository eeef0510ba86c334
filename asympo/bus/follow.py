"""Following a plain stream (no consumer group) from a cursor: control events, evaluation results."""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from google.protobuf.message import Message

from asympo.bus.codec import EntryError, decode, encode
from asympo.bus.keys import JobKeys
from asympo.bus.skipped import SkipLog

log = logging.getLogger(__name__)


class StreamFollower:
    """Every entry of `stream` after `cursor`, decoded into `message_type`.

    Each reader keeps its own cursor, so any number of services can follow the same stream. An entry
    that does not decode, or that `check` finds a problem with (it returns the reason, or None), is not
    returned: with a `skips` log it is dead-lettered with the reason, else only logged.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        stream: str,
        message_type: type[Message],
        job_id: str,
        cursor: str = "0-0",
        *,
        skips: SkipLog | None = None,
        check: Callable[[Message], str | None] | None = None,
    ):
        self.redis, self.stream, self.message_type, self.job_id = redis, stream, message_type, job_id
        self.cursor = cursor
        self.skips, self.check = skips, check
        self.keys = JobKeys(job_id)

    async def skip_to_end(self) -> None:
        """Start after the newest entry: only what is added from now on will be read."""
        last = await self.redis.xrevrange(self.stream, count=1)
        if last:
            self.cursor = _id(last[0][0])

    async def read(self, batch: int = 100) -> list[Message]:
        """Every usable entry added since the last call, oldest first."""
        return [message for _, message in await self.read_entries(batch)]

    async def read_entries(self, batch: int = 100) -> list[tuple[str, Message]]:
        """(entry id, message) of every usable entry added since the last call, oldest first."""
        out = []
        while reply := await self.redis.xread({self.stream: self.cursor}, count=batch):
            for _, entries in reply:
                for raw_id, fields in entries:
                    entry_id = self.cursor = _id(raw_id)
                    try:
                        message = decode(fields, self.message_type, self.job_id)
                    except EntryError as exc:
                        await self._skip(entry_id, fields, exc.reason)
                        continue
                    reason = self.check(message) if self.check else None
                    if reason:
                        await self._skip(entry_id, fields, reason)
                    else:
                        out.append((entry_id, message))
        return out

    async def skip(self, entry_id: str, message: Message, reason: str) -> None:
        """Dead-letter an entry `read_entries` returned that its reader cannot use after all."""
        await self._skip(entry_id, encode(message), reason)

    async def _skip(self, entry_id: str, fields, reason: str) -> None:
        if self.skips is None:
            log.warning("unusable entry skipped", extra={"stream": self.stream, "reason": reason})
        else:
            await self.skips.put(self.keys, self.stream, entry_id, fields, reason)


def _id(raw) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
