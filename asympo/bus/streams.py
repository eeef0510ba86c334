"""Consumer-group streams with at-least-once delivery, reclaiming and dead-lettering.

A consumer ACKs an entry only after its output is durably written (`ack_and_publish` does both in
one script, and publishes only for inputs its XACK really took off the pending list). Entries a dead consumer held are taken over with XAUTOCLAIM once idle longer than
`claim_idle_s`; an entry delivered more than `max_deliveries` times, or one that cannot be decoded,
goes to the job's dead-letter stream with its reason and is ACKed, so a poison message never blocks
the stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import redis.asyncio as aioredis
from google.protobuf.message import Message
from redis.exceptions import ResponseError

from asympo.bus.codec import SCHEMA_VERSION, EntryError, decode, encode
from asympo.bus.connection import RETRYABLE
from asympo.bus.dead_letters import DeadLetters
from asympo.bus.delivery import ConsumerStats, Delivery
from asympo.bus.flow import FOREIGN, origins
from asympo.bus.keys import JobKeys
from asympo.bus.lease import Lease
from asympo.bus.stream_io import _id

log = logging.getLogger(__name__)

# For each (input id, output payload) pair: XADD the output only if XACK removed the input from the
# pending list just now.
_ACK_AND_PUBLISH = """
local out = {}
for i = 3, #ARGV, 2 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    out[#out + 1] = redis.call('XADD', KEYS[2], '*', 'pb', ARGV[i + 1], 'v', ARGV[2])
  end
end
return out
"""


class StreamConsumer:
    """One consumer of one stream's consumer group, decoding entries into `message_type`."""

    def __init__(
        self,
        redis: aioredis.Redis,
        stream: str,
        group: str,
        consumer: str,
        message_type: type[Message],
        *,
        dead_stream: str,
        job_id: str | None = None,
        claim_idle_s: float = 60.0,
        max_deliveries: int = 5,
        flow_key: str | None = None,
    ):
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.message_type = message_type
        self.dead_stream = dead_stream
        self.job_id = job_id
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self.max_deliveries = max_deliveries
        # Why this consumer last failed each entry it left un-ACKed: a task given up after
        # max_deliveries is dead-lettered with that cause, not only with the count.
        self._failures: dict[str, str] = {}
        # Dropped entries never reach the learner: admission control must stop counting them in flight.
        self.flow_key = flow_key
        self.stats = ConsumerStats()
        self._claim_cursor = "0-0"
        # Scanning for idle entries costs a round trip; doing it a few times per claim window is enough.
        self.claim_every_s = min(claim_idle_s / 2, 5.0)
        self._next_claim = 0.0
        self._group_ready = False
        self.lease = Lease(redis, stream, group, consumer, claim_idle_s)
        self.dead_letters = DeadLetters(self)

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing; idempotent."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def read(self, count: int = 16, block_ms: int = 2000) -> list[Delivery]:
        """Up to `count` usable entries: reclaimed idle ones first, then new ones (blocking up to block_ms).

        Entries that cannot be used are dead-lettered on the way and never returned. Connection
        loss is retried with backoff (inside the client) and reported as an empty read.
        """
        try:
            if not self._group_ready:
                await self.ensure_group()
            out = []
            now = time.monotonic()
            if now >= self._next_claim:
                out = await self._reclaim(count)
                # Keep sweeping while a sweep is unfinished (cursor not back at the start).
                self._next_claim = now if self._claim_cursor != "0-0" else now + self.claim_every_s
            if len(out) < count:
                out += await self._read_new(count - len(out), 0 if out else block_ms)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The stream or group vanished (Redis restarted without persistence, or a FLUSH): recreate.
            log.warning("consumer group %s on %s is gone; recreating it", self.group, self.stream)
            self._group_ready = False
            return []
        except RETRYABLE as exc:
            self.stats.reconnects += 1
            log.warning("Redis unavailable while reading %s (%s); retrying", self.stream, exc)
            await asyncio.sleep(min(5.0, 0.2 * self.stats.reconnects))
            return []
        self.stats.delivered += len(out)
        return out

    async def recover_own(self, adopt: Sequence[str] = ()) -> list[Delivery]:
        """Take back this consumer's pending entries (after a restart), and those of the `adopt` consumers.

        Each counts a delivery. `adopt` names consumers that no longer exist, e.g. the ranks a
        learner restarted with fewer ranks lost.
        """
        if not self._group_ready:
            await self.ensure_group()
        ids = []
        for name in (self.consumer, *adopt):
            pending = await self.redis.xpending_range(
                self.stream, self.group, min="-", max="+", count=10_000, consumername=name
            )
            ids += [_id(p["message_id"]) for p in pending]
        if not ids:
            return []
        # XCLAIM (unlike re-reading with id 0) bumps the delivery counter, so a message that
        # crashes this consumer on every restart still ends in the dead-letter stream.
        claimed = await self.redis.xclaim(self.stream, self.group, self.consumer, 0, ids)
        return await self._admit(claimed, reclaimed=True)

    async def _reclaim(self, count: int) -> list[Delivery]:
        result = await self.redis.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            self.claim_idle_ms,
            start_id=self._claim_cursor,
            count=count,
        )
        self._claim_cursor = _id(result[0])
        entries = result[1]
        deleted = [_id(i) for i in result[2]] if len(result) > 2 else []
        # Entries trimmed away while pending cannot be redone; ACK them so they stop being claimed.
        gone = deleted + [_id(eid) for eid, fields in entries if fields is None]
        if gone:
            await self.redis.xack(self.stream, self.group, *gone)
        return await self._admit([(eid, f) for eid, f in entries if f is not None], reclaimed=True)

    async def _read_new(self, count: int, block_ms: int) -> list[Delivery]:
        reply = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms or None
        )
        entries = reply[0][1] if reply else []
        return await self._admit(entries, reclaimed=False)

    async def _admit(self, entries: list, reclaimed: bool) -> list[Delivery]:
        if not entries:
            return []
        counts = {}
        if reclaimed:
            self.stats.reclaimed += len(entries)
            counts = await self._delivery_counts([_id(eid) for eid, _ in entries])
        out = []
        for raw_id, fields in entries:
            entry_id = _id(raw_id)
            deliveries = counts.get(entry_id, 1)
            if deliveries > self.max_deliveries:
                last = self._failures.pop(entry_id, None)
                reason = f"exceeded {self.max_deliveries} deliveries" + (
                    f"; last failure: {last}" if last else ""
                )
                await self.dead_letter(entry_id, fields, reason)
                continue
            try:
                message = decode(fields, self.message_type, self.job_id)
            except EntryError as exc:
                await self.dead_letter(entry_id, fields, exc.reason)
                continue
            out.append(Delivery(entry_id, message, deliveries))
        return out

    async def _delivery_counts(self, ids: list[str]) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
            replies = await pipe.execute()
        return {_id(r[0]["message_id"]): int(r[0]["times_delivered"]) for r in replies if r}

    async def renew(self, entry_ids: Sequence[str]) -> int:
        """Reset the idle time of the entries this consumer still holds; returns how many it holds."""
        return await self.lease.renew(entry_ids)

    def holding(self, entry_ids: Sequence[str]):
        """Keep the entries claimed while the body works on them (an async context manager; see Lease)."""
        return self.lease.holding(entry_ids)

    async def ack(self, entry_ids: Sequence[str]) -> None:
        """Acknowledge entries whose work is done (or deliberately dropped)."""
        if entry_ids:
            await self.redis.xack(self.stream, self.group, *entry_ids)

    async def consumers(self) -> list[str]:
        """The names of the group's consumers."""
        if not self._group_ready:
            await self.ensure_group()
        return [_id(c["name"]) for c in await self.redis.xinfo_consumers(self.stream, self.group)]

    async def ack_and_publish(
        self, entry_ids: Sequence[str], out_stream: str, messages: Sequence[Message]
    ) -> list[str]:
        """Publish each input's output and XACK the input, atomically, for the inputs still pending.

        An input a peer has already finished (it took the entry over and ACKed it) publishes nothing,
        and neither does a second run of the same call (redis-py re-sends a command whose reply was
        lost), so a task never turns into two groups. Returns the ids of what was published.
        """
        if len(entry_ids) != len(messages):
            raise ValueError(f"{len(entry_ids)} inputs but {len(messages)} outputs")
        if not entry_ids:
            return []
        payloads = [x for eid, m in zip(entry_ids, messages) for x in (eid, encode(m)["pb"])]
        published = await self.redis.eval(
            _ACK_AND_PUBLISH, 2, self.stream, out_stream, self.group, SCHEMA_VERSION, *payloads
        )
        return [_id(i) for i in published]

    def note_failure(self, entry_id: str, cause: str) -> None:
        """Remember why an entry is left un-ACKed, for the reason it is dead-lettered with later."""
        self._failures[entry_id] = cause[:300]
        while len(self._failures) > 10_000:  # entries other consumers took over never come back here
            del self._failures[next(iter(self._failures))]

    async def dead_letter(self, entry_id: str, fields, reason: str) -> None:
        """Record the entry and its reason in the dead-letter stream and ACK it, atomically; with a flow
        hash, counted `dropped:dead` if it is a prompt the job dispatched, else `foreign`."""
        await self.dead_letters.put(entry_id, fields, reason, counter=await self._counter(fields))

    async def _counter(self, fields) -> str:
        if self.flow_key is None or self.job_id is None:
            return "dropped:dead"
        try:
            message = decode(fields, self.message_type, self.job_id)
        except EntryError:
            # The job's own writers never write an entry that does not decode for the job: garbage,
            # another job's entry or a foreign schema is no prompt of this job, and must not count as one.
            return FOREIGN
        prompt_id = getattr(message, "prompt_id", "")
        if not prompt_id:
            return "dropped:dead"
        (origin,) = await origins(self.redis, JobKeys(self.job_id), [prompt_id])
        return FOREIGN if origin.foreign else "dropped:dead"
