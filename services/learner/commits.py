"""Versions, checkpoints and resuming: the learner's side of the commit protocol (docs/architecture.md).

A step's effects happen in this order, each durable before the next begins:

1. train (in memory only);
2. write the new version's directory (unannounced; a number above the newest announced one is free);
3. announce it on the policy stream (fenced);
4. commit: ACK the step's groups, count them trained and append the step record, in one fenced script;
5. every `checkpoint.every` steps, checkpoint (a new directory, fsynced, then LATEST).

A restarted learner restores the newest loadable checkpoint (step S, version V) and `roll_back`
(rollback.py) supersedes what came after it: step records after S (their prompts are counted as dropped,
`rolled_back`, since their updates are gone), evaluations of versions after V and any final record.
Groups read but never committed are still pending for their rank and are trained now. If versions
after V were announced, the restored weights are published as the next number, replacing a directory
a crash left unannounced there, so versions never repeat and never skip.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import torch

from asympo.bus import EntryError, decode, reconcile
from asympo.bus.fence import check_fence
from asympo.bus.policy_stream import version_problem
from asympo.proto.v1 import bus_pb2
from asympo.runtime import fence_file
from asympo.weights.store import WeightsError, read_manifest, sweep_leftovers, version_dir, write_version

from . import distributed as D
from . import failpoints
from .admission import Admission
from .checkpoint import load_checkpoint, point_latest, write_checkpoint
from .control import JobControl, JobFailure
from .job_context import JobContext, Progress
from .rollback import roll_back
from .step_records import StepRecords

log = logging.getLogger(__name__)

POLICY_MAXLEN = 10_000
GC_INTERVAL_S = 1.0


def _finite_copy(model) -> tuple[dict, bool]:
    """A CPU copy of the module's state dict, and whether every floating-point tensor in it is finite."""
    with torch.no_grad():
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return state, all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


def _rank_of(consumer: str) -> int | None:
    return int(consumer[4:]) if consumer.startswith("rank") and consumer[4:].isdigit() else None


class VersionCommits:
    """The job's versions and checkpoints: write, announce, checkpoint; resume after a crash."""

    def __init__(
        self, ctx: JobContext, policy, admission: Admission, records: StepRecords, control: JobControl
    ):
        self.ctx = ctx
        self.policy = policy  # the loaded model: sharded model, optimizer, tokenizer, rank 0's plain copy
        self.admission = admission
        self.records = records
        self.control = control
        self.ckpt_dir = Path(ctx.settings.checkpoint_dir) / ctx.job_id
        # Versions announced by steps a roll-back undid (their evaluations no longer matter).
        self.superseded: set[int] = set()
        self._collected = -GC_INTERVAL_S  # when old versions were last collected (monotonic)

    async def resume_or_start(self) -> None:
        """Restore the newest checkpoint and roll back what followed it, or publish version 0."""
        ctx, w = self.ctx, self.ctx.world
        policy = self.policy
        if w.is_main and ctx.fence_token is not None:
            # From here on a learner that held the job before this one cannot change its files.
            for directory in (Path(ctx.settings.weight_store) / ctx.job_id, self.ckpt_dir):
                await asyncio.to_thread(fence_file.claim, directory, ctx.fence_token)
        if w.is_main:
            # Half-written or half-deleted versions a killed predecessor left behind.
            await asyncio.to_thread(sweep_leftovers, ctx.settings.weight_store, ctx.job_id)
        meta = await asyncio.to_thread(load_checkpoint, self.ckpt_dir, policy.model, policy.optimizer, w)
        if meta is not None:
            ctx.progress = Progress(meta["step"], meta["version"])
        if w.is_main:
            await roll_back(ctx)
        # Superseded records are gone before any rank trains again.
        await asyncio.to_thread(D.barrier, w)
        await self._recover_pending()
        newest = D.broadcast(await self._newest_published() if w.is_main else None, w)
        published = meta is None  # a fresh start publishes below
        if meta is not None:
            log.info("resumed from checkpoint", extra={"step": meta["step"], "version": meta["version"],
                     "checkpoint": meta["dir"], "pending_groups": len(self.admission.buffer)})  # fmt: skip
            if newest is not None and newest > ctx.progress.version:
                # Versions after the checkpoint came from steps now rolled back: continue the numbering
                # with the restored weights instead of repeating a version.
                self.superseded = set(range(ctx.progress.version + 1, newest + 1))
                ctx.progress.version = newest
                await self.publish()
                published = True
        elif newest is None:
            await self.publish(version=0)
            if w.is_main and self.records.evaluation is not None:
                # The step-0 record marks the job's start; the base model's accuracy is in it, or in an
                # eval record once the pods have evaluated version 0.
                record = {"step": 0, "version": 0, "time": time.time()}
                record["heldout_accuracy"] = await self.records.evaluate(0, 0)
                await self.records.write_record(record)
            await self.checkpoint()
        else:
            # The base model is out but the first checkpoint never completed: nothing was trained yet.
            ctx.progress.version = newest
            await self.publish()
            await self.checkpoint()
        behavior = policy.trainer.behavior
        if behavior is not None:  # grpo: the weights resumed with are the only version kept so far
            if meta is not None and not published and not meta.get("weights_are_version"):
                # Its step did not publish (sync_every > 1): the weights become a version of their own.
                await self.publish()
            await asyncio.to_thread(behavior.record, ctx.progress.version, ctx.max_staleness + 1)
        if w.is_main:
            counted, found = await reconcile(ctx.redis, ctx.keys, ctx.fence)
            if counted != found:
                log.warning("in-flight count reconciled with the streams",
                            extra={"counted": counted, "found": found})  # fmt: skip

    async def _recover_pending(self) -> None:
        """Take back the groups this rank (and ranks beyond this world) read but never committed."""
        w = self.ctx.world
        orphans = []
        if w.is_main:
            # Ranks beyond this world (a restart with fewer ranks) left pending groups: rank 0 adopts them.
            orphans = [c for c in await self.admission.consumer.consumers()
                       if _rank_of(c) is not None and _rank_of(c) >= w.size]  # fmt: skip
        # Read before the crash but maybe never checked: they go through admission again (claims hold).
        self.admission.buffer = []
        await self.admission.admit(await self.admission.consumer.recover_own(adopt=orphans), recovered=True)

    async def _newest_published(self) -> int | None:
        # Anyone with Redis's password can append to the policy stream: only an announcement of a version
        # this learner's store holds, with the same digest, can set the numbering (a forged version 10^9
        # would otherwise be continued from).
        store, job_id = Path(self.ctx.settings.weight_store), self.ctx.job_id
        for _, fields in await self.ctx.redis.xrevrange(self.ctx.keys.policy, count=200):
            try:
                pv = decode(fields, bus_pb2.PolicyVersion, job_id)
                if version_problem(pv) is None:
                    manifest = await asyncio.to_thread(read_manifest, version_dir(store, job_id, pv.version))
                    if manifest.sha256 == pv.sha256:
                        return pv.version
            except (EntryError, WeightsError):
                pass
            log.warning("policy announcement of no version in the store passed over", extra={"job": job_id})
        return None

    async def write_version(self) -> tuple[bus_pb2.PolicyVersion | None, float]:
        """Gather the full weights (all ranks) and write the next version to the store (rank 0), unannounced."""
        t0 = time.perf_counter()
        state = await self.snapshot()
        pv = None
        if self.ctx.world.is_main:
            pv = await self.write_snapshot(state, self.ctx.progress.version + 1, self.ctx.progress.step, {})
        failpoints.reach("after_write_version", self.ctx.progress.step)
        return pv, time.perf_counter() - t0

    async def snapshot(self) -> dict | None:
        """All ranks: refuse non-finite weights, then gather the full state dict (on CPU; rank 0 keeps it)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        model = self.policy.model
        if self.ctx.world.size == 1 and not hasattr(next(model.parameters()), "to_local"):
            # A plain module on one rank: its copied state dict is the full one, checked in the same pass
            # (the distributed helpers cost a small model's step ~2 ms more on the learner's core).
            state, finite = await asyncio.to_thread(_finite_copy, model)
            if not finite:
                raise JobFailure(
                    f"the weights after step {self.ctx.progress.step} hold NaN or inf; refusing to publish them"
                )
            return state
        await self._refuse_nonfinite()
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = await asyncio.to_thread(get_model_state_dict, self.policy.model, options=options)
        return state if self.ctx.world.is_main else None

    async def write_snapshot(
        self, state: dict, version: int, step: int, timings: dict[str, float]
    ) -> bus_pb2.PolicyVersion:
        """Rank 0: write `state` as `version` to the store, unannounced; `timings` gets the seconds per phase."""
        s = self.ctx.settings

        def write() -> bus_pb2.PolicyVersion:
            t0 = time.perf_counter()
            self.policy.publisher.load_state_dict(state)
            timings["load"] = time.perf_counter() - t0
            # Numbers above the newest announced one are free: a directory there is a crashed attempt's.
            # Old versions go at most once a second: listing a store that holds a grace period's worth of
            # versions cost a fast job's learner ~5 ms on every publish.
            # The job's last version: no pod will load a superseded one any more, so none outlives it (a short
            # job would otherwise leave every version it published on disk: 200 × 2 MB for the demo).
            final = step >= self.ctx.spec.algorithm.steps
            collect = final or time.monotonic() - self._collected >= GC_INTERVAL_S
            pv, _ = write_version(
                s.weight_store, self.ctx.job_id, version, step, self.policy.publisher, self.policy.tokenizer,
                keep=s.keep_versions, replace=True, grace_s=0.0 if final else s.version_grace_s,
                fence_token=self.ctx.fence_token,
                timings=timings, collect=collect,
            )  # fmt: skip
            if collect:
                self._collected = time.monotonic()
            return pv

        return await asyncio.to_thread(write)

    async def _refuse_nonfinite(self) -> None:
        """JobFailure on every rank if any rank's shard of the weights holds NaN or inf: pods must never get them."""

        def finite() -> float:
            with torch.no_grad():
                shards = (D.local_part(p) for p in self.policy.model.parameters())
                return 1.0 if all(bool(torch.isfinite(t).all()) for t in shards) else 0.0

        ok = await asyncio.to_thread(lambda: D.all_min(finite(), self.ctx.world))
        if ok < 1.0:
            raise JobFailure(
                f"the weights after step {self.ctx.progress.step} hold NaN or inf; refusing to publish them"
            )

    async def announce(self, pv: bus_pb2.PolicyVersion | None) -> None:
        """XADD the written version (rank 0, fenced); from then on every rank dispatches and trains at it."""
        if self.ctx.world.is_main:
            await self.announce_main(pv)
        await asyncio.to_thread(D.barrier, self.ctx.world)
        if not self.ctx.world.is_main:
            self.ctx.progress.version += 1
        failpoints.reach("after_announce", self.ctx.progress.step)

    async def announce_main(self, pv: bus_pb2.PolicyVersion) -> None:
        """Rank 0: XADD the written version (fenced); the dispatcher stamps tasks with it from now on."""
        await self.ctx.ledger.publish(self.ctx.keys.policy, [pv], maxlen=POLICY_MAXLEN)
        self.ctx.metrics.version.set(pv.version)
        log.info("published", extra={"version": pv.version, "step": pv.step, "bytes": pv.bytes})
        # Only now: pods must be able to load a version the dispatcher stamps on a task.
        self.ctx.progress.version = pv.version

    async def publish(self, version: int | None = None) -> float:
        """Write and announce the next version (or `version`) at once: start-up and resume."""
        t0 = time.perf_counter()
        if version is not None:
            self.ctx.progress.version = version - 1
        pv, _ = await self.write_version()
        await self.announce(pv)
        return time.perf_counter() - t0

    async def checkpoint(self) -> None:
        """Checkpoint the model, optimizer and counters (all ranks); LATEST moves once it is durable."""
        ctx = self.ctx
        t0 = time.perf_counter()
        meta = {"job_id": ctx.job_id, "step": ctx.progress.step, "version": ctx.progress.version,
                "fence": ctx.fence.token, "created_at": time.time()}  # fmt: skip
        behavior = self.policy.trainer.behavior
        if (
            behavior is not None
        ):  # grpo: are the weights exactly `version` (the last step published, or none ran)?
            meta["weights_are_version"] = ctx.progress.step == 0 or behavior.live == ctx.progress.version
        policy = self.policy
        step_dir = await asyncio.to_thread(
            write_checkpoint, self.ckpt_dir, policy.model, policy.optimizer, ctx.world, meta
        )
        failpoints.reach("checkpoint_written", ctx.progress.step)
        if ctx.world.is_main:
            await check_fence(ctx.redis, ctx.fence)  # a learner that lost the job must not move LATEST
            await asyncio.to_thread(
                point_latest, self.ckpt_dir, step_dir, ctx.settings.keep_checkpoints, ctx.fence_token
            )
        await asyncio.to_thread(D.barrier, ctx.world)
        failpoints.reach("checkpoint_pointed", ctx.progress.step)
        ctx.metrics.checkpoint_seconds.observe(time.perf_counter() - t0)
