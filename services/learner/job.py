"""One job on the learner: load, publish version 0, train step by step, publish, checkpoint, finish.

All ranks run `JobRun.run()` together. Rank 0 also dispatches prompts (in the background, so rollout
pods keep generating while a step trains), applies control events to the job record, publishes
versions and writes the per-step records. Every step starts with rank 0 broadcasting what to do
(train, pause, stop) and the live knobs, so all ranks always agree.

Commit rule: a group's prompt_id enters the job's de-duplication set when the group is read (a second
group for the same prompt is refused from then on). A step trains, publishes, then ACKs its groups and
counts them consumed (one transaction), then writes its record. After a crash the learner resumes from
the LATEST checkpoint: groups read but not ACKed are still pending for their rank and are trained
(again, if their step was lost); groups ACKed after the checkpoint are not trained again, so their
updates are lost with the rolled-back steps, but no prompt_id ever appears in two step records.
Version numbers never repeat: a restarted learner that finds versions newer than its checkpoint
publishes the restored weights as the next version.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from asympo.bus import (
    GROUP_LEARNER,
    GROUP_ROLLOUT,
    Delivery,
    JobKeys,
    SeenPrompts,
    StreamConsumer,
    newest_version,
    publish,
    read_flow,
)
from asympo.bus.codec import EntryError, decode
from asympo.bus.streams import undelivered
from asympo.models.loading import load_policy, resolve_model_path
from asympo.proto.v1 import bus_pb2
from asympo.records import FINAL_STATES, JobRecord, get_job, put_job
from asympo.spec import SpecError, live_knob
from asympo.weights import write_version

from . import distributed as D
from .checkpoint import load_checkpoint, save_checkpoint
from .dispatcher import Dispatcher
from .metrics import LearnerMetrics
from .settings import LearnerSettings
from .trainer import Trainer, shard_model

log = logging.getLogger(__name__)

STEPS_MAXLEN = 100_000


def _rank_of(consumer: str) -> int | None:
    return int(consumer[4:]) if consumer.startswith("rank") and consumer[4:].isdigit() else None


@dataclass
class Decision:
    """What every rank does next, decided by rank 0."""

    action: str  # train | pause | stop
    max_staleness: int
    reason: str = ""


@dataclass
class Progress:
    """Counters that survive in checkpoints."""

    step: int = 0
    version: int = 0
    dropped: dict = field(default_factory=lambda: {"stale": 0, "duplicate": 0, "zero_variance": 0})


class JobRun:
    """A job from load to finish on this rank."""

    def __init__(
        self, settings: LearnerSettings, world: D.World, redis, job: JobRecord, metrics: LearnerMetrics
    ):
        self.settings = settings
        self.world = world
        self.redis = redis
        self.job = job
        self.spec = job.spec
        self.keys = JobKeys(job.job_id)
        self.metrics = metrics
        self.progress = Progress()
        self.max_staleness = self.spec.algorithm.max_staleness
        self.stopping = asyncio.Event()  # set on SIGTERM: checkpoint and leave the job running for a restart
        self.buffer: list[Delivery] = []
        self.staleness_counts: dict[int, int] = {}
        self.read_tokens = 0
        self.ckpt_dir = Path(settings.checkpoint_dir) / job.job_id
        self._background: list[asyncio.Task] = []
        self._control_id = "0-0"
        self._replayed = False
        self.dispatcher: Dispatcher | None = None

    # ---- setup -----------------------------------------------------------------------------------

    async def _load(self) -> None:
        w = self.world
        path = None
        if w.is_main:
            path = await asyncio.to_thread(resolve_model_path, self.spec, self.settings.model_cache, False)
        path = await asyncio.to_thread(D.broadcast, path, w)
        self.model_path = path
        model, self.tokenizer = await asyncio.to_thread(load_policy, path, self.spec.model.dtype, "cpu")
        self.model = shard_model(model.to(w.device), w)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.spec.algorithm.lr, weight_decay=self.spec.algorithm.weight_decay
        )
        self.trainer = Trainer(
            self.model, self.optimizer, w, self.spec.algorithm, self.tokenizer.pad_token_id,
            self.settings.micro_batch_rows,
        )  # fmt: skip
        # Rank 0 keeps a plain copy to write versions and compute probes and held-out accuracy: the
        # sharded model's forward is collective and cannot run on one rank alone.
        self.publisher = (
            (await asyncio.to_thread(load_policy, path, "float32", "cpu"))[0] if w.is_main else None
        )
        self.consumer = StreamConsumer(
            self.redis, self.keys.groups, GROUP_LEARNER, f"rank{w.rank}", bus_pb2.ScoredGroup,
            dead_stream=self.keys.dead, job_id=self.job.job_id, claim_idle_s=10**7, flow_key=self.keys.flow,
        )  # fmt: skip
        self.seen = SeenPrompts(self.redis, self.keys)

    # ---- the job ---------------------------------------------------------------------------------

    async def run(self) -> str:
        """Train the job; returns the final state (succeeded, cancelled, or running when interrupted)."""
        w = self.world
        algo = self.spec.algorithm
        if algo.prompts_per_step % w.size:
            raise ValueError(
                f"algorithm.prompts_per_step ({algo.prompts_per_step}) must be divisible by the learner's "
                f"{w.size} ranks"
            )
        await self._load()
        await self._resume_or_start()
        if w.is_main:
            self.dispatcher = Dispatcher(self.redis, self.job.job_id, self.spec, self.tokenizer)
            self._background.append(asyncio.ensure_future(self._dispatch_forever()))
            job = await get_job(self.redis, self.job.job_id)
            if job is not None and job.state in ("queued", "starting", "running"):
                await self._set_state("running")
        try:
            while self.progress.step < algo.steps:
                decision = await self._decide()
                if decision.action == "stop":
                    if decision.reason == "cancelled":
                        return "cancelled"
                    await self._checkpoint()  # shutdown: leave the job running for the next learner
                    return "running"
                if decision.action == "pause":
                    await asyncio.sleep(self.settings.poll_s)
                    continue
                self.max_staleness = decision.max_staleness
                if not await self._step():
                    continue
            await self._finish()
            return "succeeded"
        finally:
            for task in self._background:
                task.cancel()
            self.metrics.job_active.set(0)

    async def _resume_or_start(self) -> None:
        w = self.world
        meta = await asyncio.to_thread(load_checkpoint, self.ckpt_dir, self.model, self.optimizer, w)
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
            if w.is_main and self.spec.eval.every:
                accuracy = await self._evaluate()
                await self._write_record(
                    {"step": 0, "version": 0, "time": time.time(), "heldout_accuracy": accuracy}
                )
        else:
            # A restart before the first checkpoint: the base model is already out; start over from it.
            self.progress.version = newest
            await self._publish()
        await self._checkpoint()

    async def _newest_published(self) -> int | None:
        pv = await newest_version(self.redis, self.keys)
        return None if pv is None else pv.version

    # ---- control ---------------------------------------------------------------------------------

    async def _decide(self) -> Decision:
        decision = None
        if self.world.is_main:
            decision = await self._main_decision()
        return await asyncio.to_thread(D.broadcast, decision, self.world)

    async def _main_decision(self) -> Decision:
        await self._apply_control_events()
        job = await get_job(self.redis, self.job.job_id)
        if self.stopping.is_set():
            return Decision("stop", self.max_staleness, "shutdown")
        if job is None or job.state == "cancelled":
            return Decision("stop", self.max_staleness, "cancelled")
        if job.state == "paused":
            return Decision("pause", self.max_staleness)
        return Decision("train", self.max_staleness)

    async def _apply_control_events(self) -> None:
        # On the first call the whole stream is read: earlier knob settings are re-applied (a restarted
        # learner keeps them), earlier pause/resume/cancel are not (the job record holds their outcome).
        replaying, self._replayed = not self._replayed, True
        while reply := await self.redis.xread({self.keys.control: self._control_id}, count=100):
            for _, entries in reply:
                for entry_id, fields in entries:
                    self._control_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    try:
                        event = decode(fields, bus_pb2.ControlEvent, self.job.job_id)
                    except EntryError as exc:
                        log.warning("unreadable control event skipped", extra={"reason": exc.reason})
                        continue
                    await self._apply_event(event, replaying)
            if not replaying:
                return

    async def _apply_event(self, event: bus_pb2.ControlEvent, replaying: bool) -> None:
        if event.kind == "set":
            await self._apply_knob(event.key, event.value, persist=not replaying)
            return
        job = await get_job(self.redis, self.job.job_id)
        if replaying or job is None:
            return
        if event.kind == "pause" and job.state == "running":
            await self._set_state("paused")
        elif event.kind == "resume" and job.state == "paused":
            await self._set_state("running")
        elif event.kind == "cancel" and job.state not in FINAL_STATES:
            await self._set_state("cancelled")
        elif event.kind not in ("pause", "resume", "cancel"):
            log.warning("unknown control event kind ignored", extra={"kind": event.kind})

    async def _apply_knob(self, key: str, value: str, persist: bool) -> None:
        """Set a live knob (validated like the job spec) and, unless replaying, record it in the job's spec."""
        try:
            dotted = live_knob(key)
            updated = self.spec.with_overrides({dotted: yaml.safe_load(value)})
        except (SpecError, yaml.YAMLError) as exc:
            log.warning("control event ignored", extra={"key": key, "value": value, "cause": str(exc)})
            return
        section = dotted.split(".")[0]
        setattr(self.spec, section, getattr(updated, section))
        self.max_staleness = self.spec.algorithm.max_staleness
        if self.dispatcher is not None:
            self.dispatcher.max_staleness = self.max_staleness
        log.info("knob set", extra={"key": dotted, "value": value})
        if persist:
            job = await get_job(self.redis, self.job.job_id)
            if job is not None:
                setattr(job.spec, section, getattr(updated, section))
                await put_job(self.redis, job)

    async def _set_state(self, state: str, message: str = "") -> None:
        job = await get_job(self.redis, self.job.job_id) or self.job
        job.state, job.message = state, message or job.message
        job.step, job.version = self.progress.step, self.progress.version
        await put_job(self.redis, job)
        self.job = job

    async def _dispatch_forever(self) -> None:
        while True:
            try:
                job = await get_job(self.redis, self.job.job_id)
                running = job is not None and job.state == "running"
                if running:
                    sent = await self.dispatcher.fill(self.progress.version)
                    self.metrics.dispatched.inc(sent)
                self.metrics.job_active.set(1 if running else 0)
                flow = await read_flow(self.redis, self.keys)
                self.metrics.in_flight.set(flow.in_flight)
                self.metrics.prompt_backlog.set(
                    await undelivered(self.redis, self.keys.prompts, GROUP_ROLLOUT)
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatching failed; retrying")
            await asyncio.sleep(self.settings.poll_s)

    # ---- a step ----------------------------------------------------------------------------------

    def _staleness(self, group: bus_pb2.ScoredGroup) -> int:
        return self.progress.version - group.gen_version_start

    async def _admit(self, deliveries: list[Delivery]) -> None:
        """Sort fresh deliveries into the buffer, dropping duplicates, stale and (optionally) flat groups."""
        drop, dup = [], []
        # Generated work that reached the learner, used or not (for throughput: tokens generated per second).
        self.read_tokens += sum(len(c.token_ids) for d in deliveries for c in d.message.completions)
        claims = await self.seen.claim([d.message.prompt_id for d in deliveries]) if deliveries else []
        for d, first in zip(deliveries, claims):
            g = d.message
            if not first:
                dup.append(d)
            elif self._staleness(g) > self.max_staleness:
                drop.append((d, "stale"))
            elif self.spec.algorithm.drop_zero_variance and len({c.reward for c in g.completions}) <= 1:
                drop.append((d, "zero_variance"))
            else:
                self.buffer.append(d)
        await self._discard(dup, "duplicate", consumed=False)
        for reason in ("stale", "zero_variance"):
            await self._discard([d for d, r in drop if r == reason], reason, consumed=True)

    async def _discard(self, deliveries: list[Delivery], reason: str, consumed: bool) -> None:
        if not deliveries:
            return
        ids = [d.entry_id for d in deliveries]
        await (self.consumer.ack_consumed(ids) if consumed else self.consumer.ack(ids))
        self.progress.dropped[reason] += len(deliveries)
        self.metrics.groups_dropped.labels(reason).inc(len(deliveries))

    async def _collect(self, need: int) -> bool:
        """Fill the buffer to `need` usable groups; False if the job stopped meanwhile."""
        # Groups kept from an interrupted step may have gone stale since.
        kept = [d for d in self.buffer if self._staleness(d.message) <= self.max_staleness]
        stale = [d for d in self.buffer if d not in kept]
        self.buffer = kept
        await self._discard(stale, "stale", consumed=True)
        # Recovered groups were claimed in the dedup set by the run that read them: they are not duplicates.
        last_check = time.monotonic()
        while len(self.buffer) < need:
            batch = await self.consumer.read(need - len(self.buffer), block_ms=500)
            await self._admit(batch)
            if time.monotonic() - last_check > self.settings.poll_s:
                last_check = time.monotonic()
                job = await get_job(self.redis, self.job.job_id)
                if self.stopping.is_set() or job is None or job.state != "running":
                    return False
        return True

    async def _step(self) -> bool:
        w = self.world
        per_rank = self.spec.algorithm.prompts_per_step // w.size
        t0 = time.perf_counter()
        ready = await self._collect(per_rank)
        if await asyncio.to_thread(D.all_min, 1.0 if ready else 0.0, w) < 1:
            return False  # someone's job paused or stopped mid-collection; the buffers are kept
        batch, self.buffer = self.buffer[:per_rank], self.buffer[per_rank:]
        groups = [d.message for d in batch]
        staleness = [self._staleness(g) for g in groups]
        stats = await asyncio.to_thread(self.trainer.step, groups)
        self.progress.step += 1
        publish_s = None
        if (
            self.progress.step % self.spec.algorithm.sync_every == 0
            or self.progress.step == self.spec.algorithm.steps
        ):
            publish_s = await self._publish()
        # Commit after publishing, so the dispatcher's freed room is filled at the new version.
        await self.consumer.ack_consumed([d.entry_id for d in batch])
        trained = await asyncio.to_thread(
            D.gather, ([g.prompt_id for g in groups], staleness, self.read_tokens), w
        )
        self.read_tokens = 0
        ckpt_every = self.spec.checkpoint.every
        if ckpt_every and self.progress.step % ckpt_every == 0:
            await self._checkpoint()
        if w.is_main:
            await self._record(stats, trained, time.perf_counter() - t0, publish_s)
        return True

    async def _publish(self, version: int | None = None) -> float:
        """Gather the full weights (all ranks), write and announce the next version (rank 0)."""
        t0 = time.perf_counter()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = await asyncio.to_thread(get_model_state_dict, self.model, options=options)
        next_version = self.progress.version + 1 if version is None else version
        if self.world.is_main:
            self.publisher.load_state_dict(state)
            pv, _ = await asyncio.to_thread(
                write_version, self.settings.weight_store, self.job.job_id, next_version,
                self.progress.step, self.publisher, self.tokenizer, keep=self.settings.keep_versions,
            )  # fmt: skip
            await publish(self.redis, self.keys.policy, [pv])
            self.metrics.version.set(pv.version)
            self.metrics.publish_seconds.observe(time.perf_counter() - t0)
            log.info("published", extra={"version": pv.version, "step": pv.step, "bytes": pv.bytes})
        await asyncio.to_thread(D.barrier, self.world)
        # Only now: the dispatcher stamps tasks with this version, which pods must be able to load.
        self.progress.version = next_version
        return time.perf_counter() - t0

    async def _checkpoint(self) -> None:
        t0 = time.perf_counter()
        meta = {
            "job_id": self.job.job_id, "step": self.progress.step, "version": self.progress.version,
            "dropped": self.progress.dropped, "max_staleness": self.max_staleness, "created_at": time.time(),
        }  # fmt: skip
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

    async def _record(self, stats: dict, trained: list, seconds: float, publish_s: float | None) -> None:
        prompt_ids = [pid for ids, _, _ in trained for pid in ids]
        staleness = [s for _, st, _ in trained for s in st]
        generated = sum(n for _, _, n in trained)
        for s in staleness:
            self.staleness_counts[s] = self.staleness_counts.get(s, 0) + 1
            self.metrics.staleness.observe(s)
        m = self.metrics
        m.step.set(self.progress.step)
        m.step_seconds.observe(seconds)
        m.tokens_trained.inc(stats["tokens"])
        m.tokens_per_s.set(stats["tokens"] / max(seconds, 1e-9))
        m.groups_trained.inc(len(prompt_ids))
        for gauge, key in ((m.loss, "loss"), (m.delta, "delta"), (m.balance_ratio, "R"), (m.reward_mean, "reward_mean"),
                           (m.reward_std, "reward_std"), (m.accuracy, "accuracy"), (m.grad_norm, "grad_norm")):  # fmt: skip
            if math.isfinite(stats.get(key, math.nan)):
                gauge.set(stats[key])
        record = {
            "step": self.progress.step, "version": self.progress.version, "time": time.time(),
            "seconds": seconds, "publish_seconds": publish_s, "prompt_ids": prompt_ids, "staleness": staleness,
            "tokens_per_s": stats["tokens"] / max(seconds, 1e-9), "dropped": dict(self.progress.dropped),
            "generated_tokens": generated,
            "max_staleness": self.max_staleness, **stats,
        }  # fmt: skip
        if self.spec.eval.every and self.progress.step % self.spec.eval.every == 0:
            record["heldout_accuracy"] = await self._evaluate()
        await self._write_record(record)
        job = await get_job(self.redis, self.job.job_id)
        if job is not None and job.state in ("running", "paused"):
            job.step, job.version = self.progress.step, self.progress.version
            await put_job(self.redis, job)

    async def _write_record(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        await self.redis.xadd(
            self.keys.steps, {"json": json.dumps(clean)}, maxlen=STEPS_MAXLEN, approximate=True
        )

    async def _evaluate(self) -> float | None:
        """Held-out greedy accuracy of the published weights (rank 0, small models only)."""
        if sum(p.numel() for p in self.publisher.parameters()) > self.settings.eval_max_params:
            return None
        from asympo.models.evaluate import greedy_accuracy
        from asympo.tasks import build_task

        problems = build_task(self.spec.task).heldout()
        max_new = self.spec.eval.max_new_tokens or self.spec.sampling.max_new_tokens
        acc = await asyncio.to_thread(greedy_accuracy, self.publisher, self.tokenizer, problems, max_new)
        self.metrics.heldout_accuracy.set(acc)
        return acc

    async def _finish(self) -> None:
        await self._checkpoint()
        if self.world.is_main:
            evaluation = None
            if self.spec.eval.every:
                evaluation = await self._evaluate()
            await self._write_record(
                {"final": True, "step": self.progress.step, "version": self.progress.version,
                 "heldout_accuracy": evaluation, "time": time.time()}
            )  # fmt: skip
