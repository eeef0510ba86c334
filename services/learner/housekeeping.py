"""Keeping a job's Redis footprint bounded while it runs (rank 0): trim, prune, and a byte budget.

Every few seconds: trim the prompts, groups and evaluation streams to what their consumer groups have
not finished (asympo.bus.trim), forget de-duplication claims too old to matter, and measure what the
job's keys hold. Over `job_max_bytes` the dispatcher holds back (the streams drain as the learner
trains); over it with nothing left in flight to drain, the job's history alone is too big and the job
fails with a message naming its largest keys.
"""

from __future__ import annotations

import logging

from asympo.bus import GROUP_LEARNER, GROUP_ROLLOUT, read_flow
from asympo.bus.trim import trim_consumed

from .admission import Admission
from .dispatcher import Dispatcher
from .job_context import JobContext

log = logging.getLogger(__name__)


async def job_bytes(redis, keys) -> dict[str, int]:
    """Memory (bytes, as Redis estimates it) of each of the job's keys that exists."""
    names = keys.all()
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.memory_usage(name)
        sizes = await pipe.execute()
    return {name: int(size) for name, size in zip(names, sizes) if size}


class Housekeeping:
    """One round of trimming, pruning and budget checks; `run_once` is called by the dispatch loop."""

    def __init__(self, ctx: JobContext, admission: Admission, dispatcher: Dispatcher):
        self.ctx = ctx
        self.admission = admission
        self.dispatcher = dispatcher
        self.trimmed = 0

    async def run_once(self) -> dict[str, int]:
        """Trim, prune and measure; returns the bytes per key."""
        ctx, k = self.ctx, self.ctx.keys
        for stream, group in (
            (k.prompts, GROUP_ROLLOUT),
            (k.groups, GROUP_LEARNER),
            (k.evals, GROUP_ROLLOUT),
        ):
            self.trimmed += await trim_consumed(ctx.redis, stream, group, ctx.fence)
        await self.admission.seen.prune(ctx.progress.version - ctx.max_staleness - 1)
        sizes = await job_bytes(ctx.redis, k)
        total = sum(sizes.values())
        ctx.metrics.job_redis_bytes.set(total)
        limit = ctx.settings.job_max_bytes
        if total <= limit:
            if self.dispatcher.hold:
                log.info("the job is back under its Redis budget; dispatching again", extra={"bytes": total})
            self.dispatcher.hold = ""
            return sizes
        biggest = ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in
                            sorted(sizes.items(), key=lambda kv: -kv[1])[:3])  # fmt: skip
        why = f"the job holds {total / 2**20:.1f} MiB in Redis, over its budget of {limit / 2**20:.1f} MiB ({biggest})"
        if not self.dispatcher.hold:
            log.warning("holding dispatch: " + why)
        self.dispatcher.hold = why
        if (await read_flow(ctx.redis, k)).in_flight <= 0:
            ctx.failure = why + "; nothing is left in flight to drain (raise ASYMPO_LEARNER_JOB_MAX_BYTES)"
        return sizes
