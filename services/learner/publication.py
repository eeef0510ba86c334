"""A step's publication off the training critical path: write the version, announce it, commit the step.

Once a step has trained, every rank takes part in the snapshot of its weights (the finiteness check and
the full state dict are collectives); the rest is rank 0's alone and runs in the background while the
next step collects groups and trains: write the version directory, announce it, then commit the step's
groups and record. The order of one step's effects is the one in commits.py, and publications run one
at a time in step order: a step waits for the previous step's publication before taking its own
snapshot, so at most one is in flight and the weights copy it holds is the only extra memory.

Training step t+1 while version t+1 is still being written is what the staleness bound already allows:
groups are judged against the version the in-memory weights are about to be published as
(`JobContext.unannounced`), so admission decides exactly as if the publication had finished. With
`max_staleness: 0` nothing overlaps anyway: no prompt of step t+1 is dispatched before version t+1 is
out. A crash while a publication runs is a crash between train and commit: the step's groups are still
pending for the restarted learner, which trains them again after restoring its checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import time

from asympo.bus import read_flow

from . import failpoints
from .commits import VersionCommits
from .job_context import JobContext
from .step_records import StepRecords

log = logging.getLogger(__name__)


class Publication:
    """Rank 0's background publication of the newest trained step (at most one in flight)."""

    def __init__(self, ctx: JobContext, commits: VersionCommits, records: StepRecords, after_commit):
        self.ctx = ctx
        self.commits = commits
        self.records = records
        self.after_commit = after_commit  # async (step) -> None: progress, housekeeping, dispatcher wake-up
        self._task: asyncio.Task | None = None

    async def wait(self) -> float:
        """Wait for the publication in flight (seconds waited); its failure is raised here."""
        if self._task is None:
            return 0.0
        t0 = time.perf_counter()
        task, self._task = self._task, None
        await task
        return time.perf_counter() - t0

    def cancel(self) -> None:
        """Abandon the publication in flight (the run is failing): its step stays uncommitted, as after a crash."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    async def snapshot(self, publishing: bool, timeline: dict) -> dict | None:
        """Every rank: the full weights of a version to publish (rank 0's copy); the version counts as taken
        (grpo: each rank also keeps its shard of it for behavior log-probs, behavior.py)."""
        if not publishing:
            return None
        t0 = time.perf_counter()
        state = await self.commits.snapshot()
        timeline["snapshot"] = time.perf_counter() - t0
        if self.ctx.world.is_main:
            self.ctx.unannounced = 1
        else:
            # Only rank 0 announces and dispatches; the others just judge staleness by the new number.
            self.ctx.progress.version += 1
        behavior = self.commits.policy.trainer.behavior
        if behavior is not None:  # grpo: the ranks keep their shards of it for behavior log-probs
            version = self.ctx.progress.version + self.ctx.unannounced
            await asyncio.to_thread(behavior.record, version, self.ctx.max_staleness + 1)
        return state

    def start(self, state, stats: dict, trained: list, timeline: dict, t0: float) -> None:
        """Rank 0: write and announce `state` (None: nothing to publish this step), then commit the step."""
        if not self.ctx.world.is_main:
            return
        step = self.ctx.progress.step
        self._task = asyncio.ensure_future(self._publish(step, state, stats, trained, timeline, t0))
        self._task.add_done_callback(self._note_failure)

    def _note_failure(self, task: asyncio.Task) -> None:
        # A step waiting for groups would not notice otherwise: no commit, so no more prompts dispatched.
        if not task.cancelled() and task.exception() is not None:
            self.ctx.publication_error = task.exception()

    async def raise_failure(self) -> None:
        """Raise what stopped the publication in flight, if it failed."""
        if self.ctx.publication_error is not None:
            await self.wait()

    async def _publish(self, step: int, state, stats: dict, trained: list, timeline: dict, t0: float) -> None:
        ctx = self.ctx
        critical_s = time.perf_counter() - t0  # the step's time on the critical path, publication excluded
        publish_s = None
        if state is not None:
            t1 = time.perf_counter()
            pv = await self.commits.write_snapshot(state, ctx.progress.version + 1, step, timeline)
            failpoints.reach("after_write_version", step)
            t2 = time.perf_counter()
            await self.commits.announce_main(pv)
            timeline["announce"] = time.perf_counter() - t2
            ctx.unannounced = 0
            failpoints.reach("after_announce", step)
            publish_s = time.perf_counter() - t1
        flow = await read_flow(ctx.redis, ctx.keys)
        ctx.progress.dropped = {**flow.dropped, "duplicate": flow.duplicates, "foreign": flow.foreign}
        record = self.records.step_record(step, stats, trained, critical_s, publish_s, timeline)
        await self.records.commit([e for rank in trained for e in rank[3]], record, step)
        await self.after_commit(step)
