"""Keeping a job's Redis footprint bounded while it runs (rank 0): trim, prune, and a byte budget.

Every few seconds: trim the prompts, groups and evaluation streams to what their consumer groups have
not finished (asympo.bus.trim), forget de-duplication claims too old to matter, and measure what the
job's keys hold. Over `job_max_bytes` the dispatcher holds back (the streams drain as the learner
trains); over it with nothing left in flight to drain, the job's history alone is too big and the job
fails with a message naming its largest keys.

It also reads the job's new dead letters (prompt tasks the pods gave up on, groups the learner refused;
not `foreign` ones, which are no work of the job). When the newest `dead_run_limit` of them, all written
since the last committed step, share one cause, every prompt in flight died for it: the job fails with
that cause rather than burning compute. The limit is the most prompts the job may have in flight
((max_staleness + 1) × prompts_per_step), and at least MIN_DEAD_RUN, so a healthy job's occasional bad
item, or a short burst, never trips it: one committed step or one other cause starts the count again.
"""

from __future__ import annotations

import logging

from asympo.bus import GROUP_LEARNER, GROUP_ROLLOUT, admission_limit, read_flow
from asympo.bus.flow import FOREIGN
from asympo.bus.trim import trim_consumed
from asympo.jobs.states import TransitionRefused

from .admission import Admission
from .dispatcher import Dispatcher
from .job_context import JobContext

log = logging.getLogger(__name__)

MIN_DEAD_RUN = 8


def dead_cause(reason: str) -> str:
    """A dead-letter reason without what varies between entries (which completion, which token, details)."""
    return reason.split(" (")[0].split(": ")[0]


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
        self.dead_cursor = ""  # the newest dead letter read ("": start from now)
        self.trained_ms = 0  # Redis time of the last committed step (or of this learner's start)
        self.dead_run: list[tuple[str, str]] = []  # (stream, reason) of the current run of one cause

    async def trained(self) -> None:
        """A step was committed: dead letters so far no longer count against the job."""
        self.trained_ms = await self._now_ms()
        self.dead_run = []

    async def _now_ms(self) -> int:
        sec, usec = await self.ctx.redis.time()
        return int(sec) * 1000 + int(usec) // 1000

    def dead_run_limit(self) -> int:
        """Dead letters in a row, of one cause and with no step committed, that fail the job."""
        return max(
            MIN_DEAD_RUN, admission_limit(self.ctx.max_staleness, self.ctx.spec.algorithm.prompts_per_step)
        )

    async def watch_dead_letters(self) -> str:
        """Read the dead letters written since the last call; the failure they mean, or ""."""
        k = self.ctx.keys
        if not self.dead_cursor:
            self.trained_ms = self.trained_ms or await self._now_ms()
            self.dead_cursor = f"{self.trained_ms}-0"
        entries = await self.ctx.redis.xrange(k.dead, min=f"({self.dead_cursor}", count=1000)
        for raw_id, fields in entries:
            self.dead_cursor = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            wanted = ("stream", "reason", "counted")  # the payload is binary: never decoded here
            f = {_text(a): _text(b) for a, b in fields.items() if _text(a) in wanted}
            if f.get("stream") not in (k.prompts, k.groups) or f.get("counted") == FOREIGN:
                continue
            if int(self.dead_cursor.split("-")[0]) < self.trained_ms:
                continue  # written before the last committed step
            if self.dead_run and dead_cause(self.dead_run[-1][1]) != dead_cause(f["reason"]):
                self.dead_run = []
            self.dead_run.append((f["stream"], f["reason"]))
        limit = self.dead_run_limit()
        if len(self.dead_run) < limit:
            return ""
        stream, reason = self.dead_run[-1]
        what = "prompt task" if stream == k.prompts else "scored group"
        return (
            f"every {what} is being dead-lettered: {reason} ({len(self.dead_run)} dead letters in a row for "
            f"this cause with no step trained meanwhile; the limit is {limit})"
        )

    async def fail(self, why: str) -> None:
        """Fail the job at the next step, and in its record now so that every rank stops waiting for groups."""
        if self.ctx.failure:
            return
        log.error("failing the job", extra={"cause": why})
        self.ctx.failure = why
        try:
            await self.admission.control.set_state("failed", message=why)
        except TransitionRefused:
            pass  # e.g. cancelled meanwhile: that stands

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
        why = await self.watch_dead_letters()
        if why:
            await self.fail(why)
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
            await self.fail(why + "; nothing is left in flight to drain (raise ASYMPO_LEARNER_JOB_MAX_BYTES)")
        return sizes


def _text(raw) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
