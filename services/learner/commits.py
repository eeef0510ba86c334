"""Publishing and checkpointing a job's versions: write, checkpoint with a commit record, announce; resume completes a half-done commit."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

from asympo.bus import newest_version, publish
from asympo.proto.v1 import bus_pb2
from asympo.weights.store import announcement, version_dir, write_version

from . import distributed as D
from .checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


def _rank_of(consumer: str) -> int | None:
    return int(consumer[4:]) if consumer.startswith("rank") and consumer[4:].isdigit() else None


@dataclass
class Progress:
    """Counters that survive in checkpoints."""

    step: int = 0
    version: int = 0
    dropped: dict = field(default_factory=lambda: {"stale": 0, "duplicate": 0, "zero_variance": 0})


class VersionCommits:
    """Publishing and checkpointing a job's versions (a part of JobRun)."""

    async def _resume_or_start(self) -> None:
        w = self.world
        meta = await asyncio.to_thread(load_checkpoint, self.ckpt_dir, self.model, self.optimizer, w)
        if meta is not None:
            await self._complete_commit(meta)
        # The checkpoint's groups are ACKed before any rank recovers its pending ones.
        await asyncio.to_thread(D.barrier, w)
        # Ranks beyond this world (a restart with fewer ranks) left pending groups: rank 0 adopts them.
        orphans = []
        if w.is_main:
            orphans = [
                c
                for c in await self.consumer.consumers()
                if _rank_of(c) is not None and _rank_of(c) >= w.size
            ]
        recovered = await self.consumer.recover_own(adopt=orphans)
        self.buffer = recovered
        if meta is not None:
            self.progress = Progress(meta["step"], meta["version"], meta.get("dropped", Progress().dropped))
            self.max_staleness = meta.get("max_staleness", self.max_staleness)
            log.info(
                "resumed from checkpoint",
                extra={"step": meta["step"], "version": meta["version"], "pending_groups": len(recovered)},
            )
            newest = D.broadcast(await self._newest_published() if w.is_main else None, w)
            if newest is not None and newest > self.progress.version:
                # Versions after the checkpoint were published from steps now rolled back: continue the
                # numbering with the restored weights instead of repeating a version.
                self.progress.version = newest
                await self._publish()
            return
        if w.is_main:
            await self._set_state("starting")
        newest = D.broadcast(await self._newest_published() if w.is_main else None, w)
        if newest is None:
            await self._publish(version=0)
            if w.is_main and self.evaluation is not None:
                # The step-0 record marks the job's start; the base model's accuracy is in it, or in an
                # eval record once the pods have evaluated version 0.
                record = {"step": 0, "version": 0, "time": time.time()}
                record["heldout_accuracy"] = await self._evaluate(0, 0)
                await self._write_record(record)
        else:
            # A restart before the first checkpoint: the base model is already out; start over from it.
            self.progress.version = newest
            await self._publish()
        await self._checkpoint()

    async def _newest_published(self) -> int | None:
        pv = await newest_version(self.redis, self.keys)
        return None if pv is None else pv.version

    async def _write_version(self) -> tuple[bus_pb2.PolicyVersion | None, float]:
        """Gather the full weights (all ranks) and write the next version to the store (rank 0), unannounced."""
        t0 = time.perf_counter()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = await asyncio.to_thread(get_model_state_dict, self.model, options=options)
        pv = None
        if self.world.is_main:
            self.publisher.load_state_dict(state)
            # Numbers above the newest announced one are free: a directory there is a crashed attempt's.
            pv, _ = await asyncio.to_thread(
                write_version, self.settings.weight_store, self.job.job_id, self.progress.version + 1,
                self.progress.step, self.publisher, self.tokenizer, keep=self.settings.keep_versions,
                replace=True, grace_s=self.settings.version_grace_s,
            )  # fmt: skip
        return pv, time.perf_counter() - t0

    async def _announce(self, pv: bus_pb2.PolicyVersion | None) -> None:
        """XADD the written version (rank 0); from then on every rank dispatches and trains at it."""
        if self.world.is_main:
            await publish(self.redis, self.keys.policy, [pv])
            self.metrics.version.set(pv.version)
            log.info("published", extra={"version": pv.version, "step": pv.step, "bytes": pv.bytes})
        await asyncio.to_thread(D.barrier, self.world)
        # Only now: the dispatcher stamps tasks with this version, which pods must be able to load.
        self.progress.version += 1

    async def _publish(self, version: int | None = None) -> float:
        """Write and announce the next version (or `version`) at once: start-up and resume."""
        t0 = time.perf_counter()
        if version is not None:
            self.progress.version = version - 1
        pv, _ = await self._write_version()
        await self._announce(pv)
        return time.perf_counter() - t0

    async def _checkpoint(self, commit: dict | None = None) -> None:
        t0 = time.perf_counter()
        meta = {
            "job_id": self.job.job_id, "step": self.progress.step, "version": self.progress.version,
            "dropped": self.progress.dropped, "max_staleness": self.max_staleness, "created_at": time.time(),
        }  # fmt: skip
        if commit is not None:
            meta["commit"] = commit
            if commit["version"] is not None:
                meta["version"] = commit["version"]  # what the step publishes, announced or not
        await asyncio.to_thread(
            save_checkpoint,
            self.ckpt_dir,
            self.model,
            self.optimizer,
            self.world,
            meta,
            self.settings.keep_checkpoints,
        )
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - t0)

    async def _complete_commit(self, meta: dict) -> None:
        """Finish what the checkpoint's step had not: announce its version, ACK its groups, write its record."""
        commit = meta.get("commit")
        if not commit or not self.world.is_main:
            return
        newest = await self._newest_published()
        if commit["version"] is not None and (newest is None or newest < commit["version"]):
            path = version_dir(self.settings.weight_store, self.job.job_id, commit["version"])
            await publish(self.redis, self.keys.policy, [await asyncio.to_thread(announcement, path)])
            log.info("announced the checkpoint's version", extra={"version": commit["version"]})
        await self.consumer.ack_consumed(commit["entries"])  # idempotent: only still-pending ones count
        last = await self.redis.xrevrange(self.keys.steps, count=20)
        written = {json.loads(f[b"json"]).get("step") for _, f in last}
        if commit["record"] is not None and meta["step"] not in written:
            await self._write_record(commit["record"])
