"""Which scored groups a step trains on: read, de-duplicate, drop the stale and the flat, buffer the rest."""

from __future__ import annotations

import time

from asympo.bus import Delivery, SeenPrompts, StreamConsumer

from .control import JobControl
from .job_context import JobContext


class Admission:
    """This rank's buffer of groups admitted for training, filled from its consumer of the groups stream."""

    def __init__(self, ctx: JobContext, consumer: StreamConsumer, control: JobControl):
        self.ctx = ctx
        self.consumer = consumer
        self.control = control
        self.seen = SeenPrompts(ctx.redis, ctx.keys)
        self.buffer: list[Delivery] = []
        # Generated work that reached the learner, used or not (for throughput: tokens generated per second).
        self.read_tokens = 0

    def _stale(self, d: Delivery) -> bool:
        return self.ctx.staleness(d.message.gen_version_start) > self.ctx.max_staleness

    async def admit(self, deliveries: list[Delivery]) -> None:
        """Sort fresh deliveries into the buffer, dropping duplicates, stale and (optionally) flat groups."""
        drop, dup = [], []
        self.read_tokens += sum(len(c.token_ids) for d in deliveries for c in d.message.completions)
        claims = await self.seen.claim([d.message.prompt_id for d in deliveries]) if deliveries else []
        for d, first in zip(deliveries, claims):
            g = d.message
            if not first:
                dup.append(d)
            elif self._stale(d):
                drop.append((d, "stale"))
            elif self.ctx.spec.algorithm.drop_zero_variance and len({c.reward for c in g.completions}) <= 1:
                drop.append((d, "zero_variance"))
            else:
                self.buffer.append(d)
        await self.discard(dup, "duplicate", consumed=False)
        for reason in ("stale", "zero_variance"):
            await self.discard([d for d, r in drop if r == reason], reason, consumed=True)

    async def discard(self, deliveries: list[Delivery], reason: str, consumed: bool) -> None:
        """ACK groups that will not be trained and count them under `reason`."""
        if not deliveries:
            return
        ids = [d.entry_id for d in deliveries]
        await (self.consumer.ack_consumed(ids) if consumed else self.consumer.ack(ids))
        self.ctx.progress.dropped[reason] += len(deliveries)
        self.ctx.metrics.groups_dropped.labels(reason).inc(len(deliveries))

    async def collect(self, need: int) -> bool:
        """Fill the buffer to `need` usable groups; False if the job stopped meanwhile."""
        # Groups kept from an interrupted step may have gone stale since.
        stale = [d for d in self.buffer if self._stale(d)]
        self.buffer = [d for d in self.buffer if not self._stale(d)]
        await self.discard(stale, "stale", consumed=True)
        # Recovered groups were claimed in the dedup set by the run that read them: they are not duplicates.
        last_check = time.monotonic()
        while len(self.buffer) < need:
            batch = await self.consumer.read(need - len(self.buffer), block_ms=500)
            await self.admit(batch)
            if time.monotonic() - last_check > self.ctx.settings.poll_s:
                last_check = time.monotonic()
                if self.ctx.world.is_main:  # a pause or cancel must not wait until slow pods deliver a step
                    await self.control.apply_events()
                if not await self.control.running():
                    return False
        return True

    def take(self, n: int) -> tuple[list[Delivery], int]:
        """The first n buffered groups for a step, and the generated tokens read since the last take."""
        batch, self.buffer = self.buffer[:n], self.buffer[n:]
        tokens, self.read_tokens = self.read_tokens, 0
        return batch, tokens
