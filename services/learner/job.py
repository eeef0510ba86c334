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
from asympo.bus.follow import StreamFollower
from asympo.bus.streams import undelivered
from asympo.models.loading import load_policy, resolve_model_path
from asympo.models.prompts import Prompter
from asympo.proto.v1 import bus_pb2
from asympo.records import FINAL_STATES, JobRecord, get_job, put_job
from asympo.spec import SpecError, live_knob
from asympo.weights import announcement, version_dir, write_version

from . import distributed as D
from .checkpoint import load_checkpoint, save_checkpoint
from .dispatcher import Dispatcher
from .evaluation import LearnerEvaluation, RolloutEvaluation
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
        self.control = StreamFollower(redis, self.keys.control, bus_pb2.ControlEvent, job.job_id)
        self._replayed = False
        self.dispatcher: Dispatcher | None = None
        self.evaluation: RolloutEvaluation | LearnerEvaluation | None = None

    # ---- setup -----------------------------------------------------------------------------------

    async def _load(self) -> None:
        w = self.world
        path = None
        if w.is_main:
            path = await asyncio.to_thread(resolve_model_path, self.spec, self.settings.model_cache, False)
        path = await asyncio.to_thread(D.broadcast, path, w)
        self.model_path = path
        model, self.tokenizer = await asyncio.to_thread(load_policy, path, self.spec.model.dtype, "cpu")
        self.prompter = Prompter.for_model(self.tokenizer, path, self.spec.task)
        self.model = shard_model(model.to(w.device), w)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.spec.algorithm.lr, weight_decay=self.spec.algorithm.weight_decay
        )
        self.trainer = Trainer(
            self.model, self.optimizer, w, self.spec.algorithm, self.tokenizer.pad_token_id,
            self.settings.micro_batch_rows, self.settings.micro_batch_tokens,
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
        if w.is_main and self.spec.eval.every:
            if self.spec.eval_engine() == "rollout":
                self.evaluation = RolloutEvaluation(self.redis, self.job.job_id, self.spec, self.prompter)
                await self.evaluation.resume()
                self._background.append(asyncio.ensure_future(self._collect_evals_forever()))
            else:
                self.evaluation = LearnerEvaluation(self.spec, self.publisher, self.prompter)

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
            self.dispatcher = Dispatcher(self.redis, self.job.job_id, self.spec, self.prompter)
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
        for event in await self.control.read():
            await self._apply_event(event, replaying)

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
                if self.world.is_main:  # a pause or cancel must not wait until slow pods deliver a step
                    await self._apply_control_events()
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
        entries = [d.entry_id for d in batch]
        trained = await asyncio.to_thread(
            D.gather, ([g.prompt_id for g in groups], staleness, self.read_tokens, entries), w
        )
        self.read_tokens = 0
        step, algo = self.progress.step, self.spec.algorithm
        publishing = step % algo.sync_every == 0 or step == algo.steps
        pv, publish_s = None, None  # pv is rank 0's; every rank takes part in gathering and announcing
        if publishing:
            pv, publish_s = await self._write_version()
        record = self._step_record(stats, trained, time.perf_counter() - t0, publish_s) if w.is_main else None
        if self.spec.checkpoint.every and step % self.spec.checkpoint.every == 0:
            # The checkpoint holds the step's whole commit (its groups, its version, its record), so a
            # learner restarted from it finishes the commit instead of training the groups again.
            commit = {"entries": [e for *_, ids in trained for e in ids], "record": record,
                      "version": self.progress.version + 1 if publishing else None}  # fmt: skip
            await self._checkpoint(commit)
        if publishing:
            await self._announce(pv)
        # ACK after announcing, so the dispatcher's freed room is filled at the new version.
        await self.consumer.ack_consumed(entries)
        if w.is_main:
            await self._write_step(record)
        return True

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

    def _step_record(self, stats: dict, trained: list, seconds: float, publish_s: float | None) -> dict:
        """The step's record (rank 0), and its metrics."""
        prompt_ids = [pid for ids, *_ in trained for pid in ids]
        staleness = [s for _, st, *_ in trained for s in st]
        generated = sum(n for _, _, n, _ in trained)
        for s in staleness:
            self.staleness_counts[s] = self.staleness_counts.get(s, 0) + 1
            self.metrics.staleness.observe(s)
        m = self.metrics
        m.step.set(self.progress.step)
        m.step_seconds.observe(seconds)
        m.tokens_trained.inc(stats["tokens"])
        m.tokens_per_s.set(stats["tokens"] / max(seconds, 1e-9))
        m.groups_trained.inc(len(prompt_ids))
        if publish_s is not None:
            m.publish_seconds.observe(publish_s)
        for gauge, key in ((m.loss, "loss"), (m.delta, "delta"), (m.balance_ratio, "R"), (m.reward_mean, "reward_mean"),
                           (m.reward_std, "reward_std"), (m.accuracy, "accuracy"), (m.grad_norm, "grad_norm")):  # fmt: skip
            if math.isfinite(stats.get(key, math.nan)):
                gauge.set(stats[key])
        return {
            "step": self.progress.step, "version": self.progress.version + (publish_s is not None),
            "time": time.time(), "seconds": seconds, "publish_seconds": publish_s, "prompt_ids": prompt_ids,
            "staleness": staleness, "tokens_per_s": stats["tokens"] / max(seconds, 1e-9),
            "dropped": dict(self.progress.dropped), "generated_tokens": generated,
            "max_staleness": self.max_staleness, **stats,
        }  # fmt: skip

    async def _write_step(self, record: dict) -> None:
        if self.spec.eval.every and self.progress.step % self.spec.eval.every == 0:
            record["heldout_accuracy"] = await self._evaluate(self.progress.version, self.progress.step)
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

    async def _evaluate(self, version: int, step: int) -> float | None:
        """Held-out accuracy of a published version: now (learner), or None and an eval record later (pods)."""
        if isinstance(self.evaluation, LearnerEvaluation):
            accuracy = await self.evaluation.accuracy()
            self.metrics.heldout_accuracy.set(accuracy)
            self.metrics.heldout_version.set(version)
            return accuracy
        if self.evaluation is not None:
            await self.evaluation.request(version, step)
        return None

    async def _write_eval_records(self, records: list[dict]) -> None:
        for record in records:
            await self._write_record(record)
            self.metrics.heldout_accuracy.set(record["heldout_accuracy"])
            self.metrics.heldout_version.set(record["version"])
            k = record.get("eval_samples")
            if k:
                self.metrics.heldout_mean_at_k.set(record[f"heldout_mean_at_{k}"])
            log.info(
                "evaluated", extra={k: v for k, v in record.items() if k.startswith(("heldout", "version"))}
            )

    async def _collect_evals_forever(self) -> None:
        while True:
            try:
                await self._write_eval_records(await self.evaluation.collect())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("collecting evaluation results failed; retrying")
            await asyncio.sleep(self.settings.poll_s)

    async def _finish(self) -> None:
        await self._checkpoint()
        if self.world.is_main:
            evaluation = None
            if isinstance(self.evaluation, RolloutEvaluation):
                for task in self._background:  # from here on, this method collects the results itself
                    task.cancel()
                version = self.progress.version
                await self.evaluation.request(version, self.progress.step)
                records = await self.evaluation.wait(version, self.settings.eval_wait_s, self.settings.poll_s)
                await self._write_eval_records(records)
                final = self.evaluation.results.get(version)
                evaluation = final["heldout_accuracy"] if final else None
                if final is None:
                    log.warning("the final evaluation did not finish in time", extra={"version": version})
            elif self.evaluation is not None:
                evaluation = await self._evaluate(self.progress.version, self.progress.step)
            await self._write_record(
                {"final": True, "step": self.progress.step, "version": self.progress.version,
                 "heldout_accuracy": evaluation, "time": time.time()}
            )  # fmt: skip
