"""A consumer's dead-letter stream: entries it cannot use, with the reason, ACKed so they never block."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from asympo.bus.fence import FENCE_CHECK, Fence, run_fenced

if TYPE_CHECKING:
    from asympo.bus.streams import StreamConsumer

log = logging.getLogger(__name__)

# The dead-letter stream keeps the newest entries, each with at most this much of its payload.
DEAD_MAXLEN = 1000
MAX_PAYLOAD_BYTES = 64 * 1024

# XACK first: only an entry this call took off the pending list is recorded and counted, so a re-sent
# call (redis-py retries a command whose reply was lost) changes nothing the second time.
# ARGV: fence token, group, entry id, maxlen, flow counter, then the record's fields.
_DEAD_LETTER = (
    FENCE_CHECK
    + """
if redis.call('XACK', KEYS[2], ARGV[2], ARGV[3]) == 0 then return 0 end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 6))
if KEYS[4] ~= '' then redis.call('HINCRBY', KEYS[4], ARGV[5], 1) end
return 1
"""
)


class DeadLetters:
    """Moves a consumer's unusable entries to its dead-letter stream and counts them by reason."""

    def __init__(self, consumer: StreamConsumer):
        self.consumer = consumer

    async def put(
        self, entry_id: str, fields, reason: str, *, counter: str = "dropped:dead", fence: Fence | None = None
    ) -> bool:
        """Record the entry and its reason in the dead-letter stream, ACK it and bump the flow hash's
        `counter`, atomically (once); False if it was no longer pending. `fence`: the learner's lease."""
        c = self.consumer
        raw = {
            (k.decode(errors="replace") if isinstance(k, bytes) else k): v for k, v in (fields or {}).items()
        }
        record = {
            "stream": c.stream,
            "group": c.group,
            "consumer": c.consumer,
            "entry_id": entry_id,
            "reason": reason,
            "at": f"{time.time():.3f}",
            "counted": counter if c.flow_key else "",
            "pb": raw.get("pb", b""),
            "v": raw.get("v", b""),
        }
        pb = record["pb"]
        if len(pb) > MAX_PAYLOAD_BYTES:
            # Real models' groups run to tens of KB; the head is enough to see what went wrong.
            record["pb"], record["pb_bytes"], record["truncated"] = pb[:MAX_PAYLOAD_BYTES], str(len(pb)), "1"
        fields = [x for kv in record.items() for x in kv]
        moved = await run_fenced(
            c.redis, _DEAD_LETTER, fence or Fence.none(c.stream), [c.stream, c.dead_stream, c.flow_key or ""],
            [c.group, entry_id, DEAD_MAXLEN, counter, *fields],
        )  # fmt: skip
        if not int(moved):
            return False  # no longer pending: a peer or an earlier run of this call already handled it
        c.stats.dead_lettered += 1
        kind = reason.split(" (")[0]
        c.stats.dead_reasons[kind] = c.stats.dead_reasons.get(kind, 0) + 1
        log.warning("dead-lettered %s %s from %s: %s", c.message_type.__name__, entry_id, c.stream, reason)
        return True
