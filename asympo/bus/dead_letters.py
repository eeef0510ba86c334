"""A consumer's dead-letter stream: entries it cannot use, with the reason, ACKed so they never block."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asympo.bus.streams import StreamConsumer

log = logging.getLogger(__name__)

# The dead-letter stream keeps the newest entries, each with at most this much of its payload.
DEAD_MAXLEN = 1000
MAX_PAYLOAD_BYTES = 64 * 1024

# XACK first: only an entry this call took off the pending list is recorded and counted, so a re-sent
# call (redis-py retries a command whose reply was lost) changes nothing the second time.
_DEAD_LETTER = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
if KEYS[3] ~= '' then redis.call('HINCRBY', KEYS[3], 'dropped:dead', 1) end
return 1
"""


class DeadLetters:
    """Moves a consumer's unusable entries to its dead-letter stream and counts them by reason."""

    def __init__(self, consumer: StreamConsumer):
        self.consumer = consumer

    async def put(self, entry_id: str, fields, reason: str) -> None:
        """Record the entry and its reason in the dead-letter stream and ACK it, atomically (once)."""
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
        pb = record["pb"]
        if len(pb) > MAX_PAYLOAD_BYTES:
            # Real models' groups run to tens of KB; the head is enough to see what went wrong.
            record["pb"], record["pb_bytes"], record["truncated"] = pb[:MAX_PAYLOAD_BYTES], str(len(pb)), "1"
        fields = [x for kv in record.items() for x in kv]
        moved = await c.redis.eval(
            _DEAD_LETTER,
            3,
            c.stream,
            c.dead_stream,
            c.flow_key or "",
            c.group,
            entry_id,
            DEAD_MAXLEN,
            *fields,
        )
        if not int(moved):
            return  # no longer pending: a peer or an earlier run of this call already handled it
        c.stats.dead_lettered += 1
        kind = reason.split(" (")[0]
        c.stats.dead_reasons[kind] = c.stats.dead_reasons.get(kind, 0) + 1
        log.warning("dead-lettered %s %s from %s: %s", c.message_type.__name__, entry_id, c.stream, reason)
