"""A consumer's dead-letter stream: entries it cannot use, with the reason, ACKed so they never block."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from asympo.bus.stream_io import DEFAULT_MAXLEN

if TYPE_CHECKING:
    from asympo.bus.streams import StreamConsumer

log = logging.getLogger(__name__)


class DeadLetters:
    """Moves a consumer's unusable entries to its dead-letter stream and counts them by reason."""

    def __init__(self, consumer: StreamConsumer):
        self.consumer = consumer

    async def put(self, entry_id: str, fields, reason: str) -> None:
        """Record the entry and its reason in the dead-letter stream and ACK it, atomically."""
        c = self.consumer
        raw = {(k.decode() if isinstance(k, bytes) else k): v for k, v in (fields or {}).items()}
        record = {
            "stream": c.stream,
            "group": c.group,
            "consumer": c.consumer,
            "entry_id": entry_id,
            "reason": reason,
            "at": f"{time.time():.3f}",
            "pb": raw.get("pb", b""),
            "v": raw.get("v", b""),
        }
        async with c.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(c.dead_stream, record, maxlen=DEFAULT_MAXLEN, approximate=True)
            pipe.xack(c.stream, c.group, entry_id)
            if c.flow_key:
                pipe.hincrby(c.flow_key, "dropped", 1)
            await pipe.execute()
        c.stats.dead_lettered += 1
        kind = reason.split(" (")[0]
        c.stats.dead_reasons[kind] = c.stats.dead_reasons.get(kind, 0) + 1
        log.warning("dead-lettered %s %s from %s: %s", c.message_type.__name__, entry_id, c.stream, reason)
