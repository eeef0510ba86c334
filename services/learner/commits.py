"""Publishing and checkpointing a job's versions: write, checkpoint with a commit record, announce; resume completes a half-done commit."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

from asympo.bus import newest_version, publish
from asympo.proto.v1 import bus_pb2
from asympo.weights.store import announcement, version_dir, write_version

from . import distributed as D
from .admission import Admission
from .checkpoint import load_checkpoint, save_checkpoint
from .control import JobControl
from .job_context import JobContext, Progress
from .step_records import StepRecords

log = logging.getLogger(__name__)


def _rank_of(consumer: str) -> int | None:
    return int(consumer[4:]) if consumer.startswith("rank") and consumer[4:].isdigit() else None


class VersionCommits:
    """The job's versions and checkpoints: write, checkpoint with the step's commit, announce; resume."""

    def __init__(
        self, ctx: JobContext, policy, admission: Admission, records: StepRecords, control: JobControl
    ):
        self.ctx = ctx
        self.policy = policy  # the loaded model: sharded model, optimizer, tokenizer, rank 0's plain copy
        self.admission = admission
        self.records = records
        self.control = control
        self.ckpt_dir = Path(ctx.settings.checkpoint_dir) / ctx.job_id

    async def resume_or_start(self) -> None:
        """Restore the LATEST checkpoint (finishing its commit) or publish version 0; recover pending groups."""
        ctx, w = self.ctx, self.ctx.world
        policy = self.policy
        meta = await asyncio.to_thread(load_checkpoint, self.ckpt_dir, policy.model, policy.optimizer, w)
        if meta is not None:
            await self._complete_commit(meta)
        # The checkpoint's groups are ACKed before any rank recovers its pending ones.
        await asyncio.to_thread(D.barrier, w)
        # Ranks beyond this world (a restart with fewer ranks) left pending groups: rank 0 adopts them.
        orphans = []
        if w.is_main:
            orphans = [
                c
                for c in await self.admission.consumer.consumers()
                if _rank_of(c) is not None and _rank_of(c) >= w.size
            ]
        recovered = await self.admission.consumer.recover_own(adopt=orphans)
        self.admission.buffer = recovered
        if meta is not None:
            ctx.progress = Progress(meta["step"], meta["version"], meta.get("dropped", Progress().dropped))
            ctx.max_staleness = meta.get("max_staleness", ctx.max_staleness)
            log.info(
                "resumed from checkpoint",
                extra={"step": meta["step"], "version": meta["version"], "pending_groups": len(recovered)},
            )
            newest = D.broadcast(await self._newest_published() if w.is_main else None, w)
            if newest is not None and newest > self.ctx.progress.version:
                # Versions after the checkpoint were published from steps now rolled back: continue the
                # numbering with the restored weights instead of repeating a version.
                self.ctx.progress.version = newest
                await self.publish()
            return
        if w.is_main:
            await self.control.set_state("starting")
        newest = D.broadcast(await self._newest_published() if w.is_main else None, w)
        if newest is None:
            await self.publish(version=0)
            if w.is_main and self.records.evaluation is not None:
                # The step-0 record marks the job's start; the base model's accuracy is in it, or in an
                # eval record once the pods have evaluated version 0.
                record = {"step": 0, "version": 0, "time": time.time()}
                record["heldout_accuracy"] = await self.records.evaluate(0, 0)
                await self.records.write_record(record)
        else:
            # A restart before the first checkpoint: the base model is already out; start over from it.
            self.ctx.progress.version = newest
            await self.publish()
        await self.checkpoint()

    async def _newest_published(self) -> int | None:
        pv = await newest_version(self.ctx.redis, self.ctx.keys)
        return None if pv is None else pv.version

    async def write_version(self) -> tuple[bus_pb2.PolicyVersion | None, float]:
        """Gather the full weights (all ranks) and write the next version to the store (rank 0), unannounced."""
        t0 = time.perf_counter()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = await asyncio.to_thread(get_model_state_dict, self.policy.model, options=options)
        pv = None
        if self.ctx.world.is_main:
            self.policy.publisher.load_state_dict(state)
            # Numbers above the newest announced one are free: a directory there is a crashed attempt's.
            pv, _ = await asyncio.to_thread(
                write_version, self.ctx.settings.weight_store, self.ctx.job_id, self.ctx.progress.version + 1,
                self.ctx.progress.step, self.policy.publisher, self.policy.tokenizer, keep=self.ctx.settings.keep_versions,
                replace=True, grace_s=self.ctx.settings.version_grace_s,
            )  # fmt: skip
        return pv, time.perf_counter() - t0

    async def announce(self, pv: bus_pb2.PolicyVersion | None) -> None:
        """XADD the written version (rank 0); from then on every rank dispatches and trains at it."""
        if self.ctx.world.is_main:
            await publish(self.ctx.redis, self.ctx.keys.policy, [pv])
            self.ctx.metrics.version.set(pv.version)
            log.info("published", extra={"version": pv.version, "step": pv.step, "bytes": pv.bytes})
        await asyncio.to_thread(D.barrier, self.ctx.world)
        # Only now: the dispatcher stamps tasks with this version, which pods must be able to load.
        self.ctx.progress.version += 1

    async def publish(self, version: int | None = None) -> float:
        """Write and announce the next version (or `version`) at once: start-up and resume."""
        t0 = time.perf_counter()
        if version is not None:
            self.ctx.progress.version = version - 1
        pv, _ = await self.write_version()
        await self.announce(pv)
        return time.perf_counter() - t0

    async def checkpoint(self, commit: dict | None = None) -> None:
        t0 = time.perf_counter()
        meta = {
            "job_id": self.ctx.job_id, "step": self.ctx.progress.step, "version": self.ctx.progress.version,
            "dropped": self.ctx.progress.dropped, "max_staleness": self.ctx.max_staleness, "created_at": time.time(),
        }  # fmt: skip
        if commit is not None:
            meta["commit"] = commit
            if commit["version"] is not None:
                meta["version"] = commit["version"]  # what the step publishes, announced or not
        await asyncio.to_thread(
            save_checkpoint,
            self.ckpt_dir,
            self.policy.model,
            self.policy.optimizer,
            self.ctx.world,
            meta,
            self.ctx.settings.keep_checkpoints,
        )
        self.ctx.metrics.checkpoint_seconds.observe(time.perf_counter() - t0)

    async def _complete_commit(self, meta: dict) -> None:
        """Finish what the checkpoint's step had not: announce its version, ACK its groups, write its record."""
        commit = meta.get("commit")
        if not commit or not self.ctx.world.is_main:
            return
        newest = await self._newest_published()
        if commit["version"] is not None and (newest is None or newest < commit["version"]):
            path = version_dir(self.ctx.settings.weight_store, self.ctx.job_id, commit["version"])
            await publish(self.ctx.redis, self.ctx.keys.policy, [await asyncio.to_thread(announcement, path)])
            log.info("announced the checkpoint's version", extra={"version": commit["version"]})
        await self.admission.consumer.ack_consumed(
            commit["entries"]
        )  # idempotent: only still-pending ones count
        last = await self.ctx.redis.xrevrange(self.ctx.keys.steps, count=20)
        written = {json.loads(f[b"json"]).get("step") for _, f in last}
        if commit["record"] is not None and meta["step"] not in written:
            await self.records.write_record(commit["record"])
