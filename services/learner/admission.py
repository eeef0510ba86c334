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
        self.seen = SeenPrompts(ctx.redis, ctx.keys, ctx.fence)
        self.buffer: list[Delivery] = []
        # Generated work that reached the learner, used or not (for throughput: tokens generated per second).
        self.read_tokens = 0

    def _stale(self, d: Delivery) -> bool:
        return self.ctx.staleness(d.message.gen_version_start) > self.ctx.max_staleness

    async def admit(self, deliveries: list[Delivery]) -> None:
        """Sort fresh deliveries into the buffer, dropping duplicates, stale and (optionally) flat groups."""
        if not deliveries:
            return
        self.read_tokens += sum(len(c.token_ids) for d in deliveries for c in d.message.completions)
        pairs = [(d.message.prompt_id, d.entry_id) for d in deliveries]
        firsts = await self.seen.claim(pairs, self.ctx.progress.version)
        dropped: dict[str, list[Delivery]] = {"duplicate": [], "stale": [], "zero_variance": []}
        for d, first in zip(deliveries, firsts):
            g = d.message
            if not first:
                dropped["duplicate"].append(d)
            elif self._stale(d):
                dropped["stale"].append(d)
            elif self.ctx.spec.algorithm.drop_zero_variance and len({c.reward for c in g.completions}) <= 1:
                dropped["zero_variance"].append(d)
            else:
                self.buffer.append(d)
        for reason, ds in dropped.items():
            await self.discard(ds, reason)

    async def discard(self, deliveries: list[Delivery], reason: str) -> None:
        """ACK groups that will not be trained and record them under `reason` (one atomic write)."""
        if not deliveries:
            return
        entries = [(d.entry_id, d.message.prompt_id) for d in deliveries]
        n = await self.ctx.ledger.discard(entries, reason, self.ctx.progress.step)
        self.ctx.metrics.groups_dropped.labels(reason).inc(n)

    async def collect(self, need: int) -> bool:
        """Fill the buffer to `need` usable groups; False if the job stopped meanwhile."""
        # Groups kept from an interrupted step may have gone stale since.
        stale = [d for d in self.buffer if self._stale(d)]
        self.buffer = [d for d in self.buffer if not self._stale(d)]
        await self.discard(stale, "stale")
        last_check = time.monotonic()
        while len(self.buffer) < need:
            batch = await self.consumer.read(need - len(self.buffer), block_ms=500)
            await self.admit(batch)
            if time.monotonic() - last_check > self.ctx.settings.poll_s:
                last_check = time.monotonic()
                # A pause or cancel must not wait until slow pods deliver a step.
                if self.ctx.failure or not await self.control.running():
                    return False
        return True

    def take(self, n: int) -> tuple[list[Delivery], int]:
        """The first n buffered groups for a step, and the generated tokens read since the last take."""
        batch, self.buffer = self.buffer[:n], self.buffer[n:]
        tokens, self.read_tokens = self.read_tokens, 0
        return batch, tokens
