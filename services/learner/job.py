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
import logging
import time
from pathlib import Path

import torch

from asympo.bus import (
    GROUP_LEARNER,
    GROUP_ROLLOUT,
    Delivery,
    JobKeys,
    SeenPrompts,
    StreamConsumer,
    read_flow,
)
from asympo.bus.follow import StreamFollower
from asympo.bus.stream_io import undelivered
from asympo.jobs.records import JobRecord, get_job
from asympo.models.loading import load_policy, resolve_model_path
from asympo.models.prompts import Prompter
from asympo.proto.v1 import bus_pb2

from . import distributed as D
from .commits import Progress, VersionCommits
from .control import JobControl
from .dispatcher import Dispatcher
from .evaluation import LearnerEvaluation, RolloutEvaluation
from .metrics import LearnerMetrics
from .settings import LearnerSettings
from .step_records import StepRecords
from .trainer import Trainer, shard_model

log = logging.getLogger(__name__)


class JobRun(JobControl, StepRecords, VersionCommits):
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

    # ---- control ---------------------------------------------------------------------------------

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
