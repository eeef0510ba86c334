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
from dataclasses import dataclass

import torch

from asympo.bus import GROUP_LEARNER, GROUP_ROLLOUT, StreamConsumer, read_flow
from asympo.bus.stream_io import undelivered
from asympo.jobs.records import JobRecord
from asympo.models.loading import load_policy, resolve_model_path
from asympo.models.prompts import Prompter
from asympo.proto.v1 import bus_pb2

from . import distributed as D
from .admission import Admission
from .commits import VersionCommits
from .control import JobControl
from .dispatcher import Dispatcher
from .evaluation import LearnerEvaluation, RolloutEvaluation
from .job_context import JobContext, Progress
from .metrics import LearnerMetrics
from .settings import LearnerSettings
from .step_records import StepRecords
from .trainer import Trainer, shard_model

log = logging.getLogger(__name__)


@dataclass
class LoadedPolicy:
    """The job's model on this rank: sharded for training, plus rank 0's plain copy for versions and probes."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    tokenizer: object
    prompter: Prompter
    trainer: Trainer
    # The sharded model's forward is collective and cannot run on one rank alone.
    publisher: torch.nn.Module | None


class JobRun:
    """A job from load to finish on this rank: the step loop, wiring its parts together."""

    def __init__(
        self, settings: LearnerSettings, world: D.World, redis, job: JobRecord, metrics: LearnerMetrics
    ):
        self.ctx = JobContext(settings, world, redis, job.job_id, job.spec, metrics)
        self.control = JobControl(self.ctx, job, on_knob=self._knob_changed)
        self.dispatcher: Dispatcher | None = None
        self.records: StepRecords | None = None  # the parts below exist once the model is loaded
        self._background: list[asyncio.Task] = []

    @property
    def job_id(self) -> str:
        """The job this run trains."""
        return self.ctx.job_id

    @property
    def progress(self) -> Progress:
        """Step, version and drop counters."""
        return self.ctx.progress

    @property
    def stopping(self) -> asyncio.Event:
        """Set on SIGTERM: the run checkpoints after its step and returns "running"."""
        return self.ctx.stopping

    @property
    def staleness_counts(self) -> dict[int, int]:
        """Staleness of the groups trained so far by this process."""
        return self.records.staleness_counts if self.records else {}

    def _knob_changed(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.max_staleness = self.ctx.max_staleness

    # ---- setup -----------------------------------------------------------------------------------

    async def _load(self) -> None:
        ctx, w, spec = self.ctx, self.ctx.world, self.ctx.spec
        path = None
        if w.is_main:
            path = await asyncio.to_thread(resolve_model_path, spec, ctx.settings.model_cache, False)
        path = await asyncio.to_thread(D.broadcast, path, w)
        model, tokenizer = await asyncio.to_thread(load_policy, path, spec.model.dtype, "cpu")
        prompter = Prompter.for_model(tokenizer, path, spec.task)
        model = shard_model(model.to(w.device), w)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=spec.algorithm.lr, weight_decay=spec.algorithm.weight_decay
        )
        trainer = Trainer(
            model, optimizer, w, spec.algorithm, tokenizer.pad_token_id,
            ctx.settings.micro_batch_rows, ctx.settings.micro_batch_tokens,
        )  # fmt: skip
        publisher = (await asyncio.to_thread(load_policy, path, "float32", "cpu"))[0] if w.is_main else None
        self.policy = LoadedPolicy(model, optimizer, tokenizer, prompter, trainer, publisher)
        consumer = StreamConsumer(
            ctx.redis, ctx.keys.groups, GROUP_LEARNER, f"rank{w.rank}", bus_pb2.ScoredGroup,
            dead_stream=ctx.keys.dead, job_id=ctx.job_id, claim_idle_s=10**7, flow_key=ctx.keys.flow,
        )  # fmt: skip
        self.admission = Admission(ctx, consumer, self.control)
        evaluation = None
        if w.is_main and spec.eval.every:
            if spec.eval_engine() == "rollout":
                evaluation = RolloutEvaluation(ctx.redis, ctx.job_id, spec, prompter)
                await evaluation.resume()
            else:
                evaluation = LearnerEvaluation(spec, publisher, prompter)
        self.records = StepRecords(ctx, evaluation)
        if isinstance(evaluation, RolloutEvaluation):
            self._background.append(asyncio.ensure_future(self.records.collect_evals_forever()))
        self.commits = VersionCommits(ctx, self.policy, self.admission, self.records, self.control)

    # ---- the job ---------------------------------------------------------------------------------

    async def run(self) -> str:
        """Train the job; returns the final state (succeeded, cancelled, or running when interrupted)."""
        ctx, w, algo = self.ctx, self.ctx.world, self.ctx.spec.algorithm
        if algo.prompts_per_step % w.size:
            raise ValueError(
                f"algorithm.prompts_per_step ({algo.prompts_per_step}) must be divisible by the learner's "
                f"{w.size} ranks"
            )
        await self._load()
        await self.commits.resume_or_start()
        if w.is_main:
            self.dispatcher = Dispatcher(ctx.redis, ctx.job_id, ctx.spec, self.policy.prompter)
            self._background.append(asyncio.ensure_future(self._dispatch_forever()))
            job = await self.control.record()
            if job is not None and job.state in ("queued", "starting", "running"):
                await self.control.set_state("running")
        try:
            while ctx.progress.step < algo.steps:
                decision = await self.control.decide()
                if decision.action == "stop":
                    if decision.reason == "cancelled":
                        return "cancelled"
                    await self.commits.checkpoint()  # shutdown: leave the job running for the next learner
                    return "running"
                if decision.action == "pause":
                    await asyncio.sleep(ctx.settings.poll_s)
                    continue
                ctx.max_staleness = decision.max_staleness
                await self._step()
            await self._finish()
            return "succeeded"
        finally:
            for task in self._background:
                task.cancel()
            ctx.metrics.job_active.set(0)

    async def _dispatch_forever(self) -> None:
        ctx = self.ctx
        while True:
            try:
                running = await self.control.running()
                if running:
                    ctx.metrics.dispatched.inc(await self.dispatcher.fill(ctx.progress.version))
                ctx.metrics.job_active.set(1 if running else 0)
                ctx.metrics.in_flight.set((await read_flow(ctx.redis, ctx.keys)).in_flight)
                ctx.metrics.prompt_backlog.set(await undelivered(ctx.redis, ctx.keys.prompts, GROUP_ROLLOUT))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatching failed; retrying")
            await asyncio.sleep(ctx.settings.poll_s)

    async def _step(self) -> bool:
        """Train one step on every rank, publish and checkpoint as the job says; False if it did not happen."""
        ctx, w = self.ctx, self.ctx.world
        per_rank = ctx.spec.algorithm.prompts_per_step // w.size
        t0 = time.perf_counter()
        ready = await self.admission.collect(per_rank)
        if await asyncio.to_thread(D.all_min, 1.0 if ready else 0.0, w) < 1:
            return False  # someone's job paused or stopped mid-collection; the buffers are kept
        batch, read_tokens = self.admission.take(per_rank)
        groups = [d.message for d in batch]
        staleness = [ctx.staleness(g.gen_version_start) for g in groups]
        stats = await asyncio.to_thread(self.policy.trainer.step, groups)
        ctx.progress.step += 1
        entries = [d.entry_id for d in batch]
        trained = await asyncio.to_thread(
            D.gather, ([g.prompt_id for g in groups], staleness, read_tokens, entries), w
        )
        step, algo = ctx.progress.step, ctx.spec.algorithm
        publishing = step % algo.sync_every == 0 or step == algo.steps
        pv, publish_s = None, None  # pv is rank 0's; every rank takes part in gathering and announcing
        if publishing:
            pv, publish_s = await self.commits.write_version()
        seconds = time.perf_counter() - t0
        record = self.records.step_record(stats, trained, seconds, publish_s) if w.is_main else None
        if ctx.spec.checkpoint.every and step % ctx.spec.checkpoint.every == 0:
            # The checkpoint holds the step's whole commit (its groups, its version, its record), so a
            # learner restarted from it finishes the commit instead of training the groups again.
            commit = {"entries": [e for *_, ids in trained for e in ids], "record": record,
                      "version": ctx.progress.version + 1 if publishing else None}  # fmt: skip
            await self.commits.checkpoint(commit)
        if publishing:
            await self.commits.announce(pv)
        # ACK after announcing, so the dispatcher's freed room is filled at the new version.
        await self.admission.consumer.ack_consumed(entries)
        if w.is_main:
            await self.records.write_step(record)
        return True

    async def _finish(self) -> None:
        ctx, records = self.ctx, self.records
        await self.commits.checkpoint()
        if not ctx.world.is_main:
            return
        evaluation = None
        if isinstance(records.evaluation, RolloutEvaluation):
            for task in self._background:  # from here on, this method collects the results itself
                task.cancel()
            version = ctx.progress.version
            await records.evaluation.request(version, ctx.progress.step)
            results = await records.evaluation.wait(version, ctx.settings.eval_wait_s, ctx.settings.poll_s)
            await records.write_eval_records(results)
            final = records.evaluation.results.get(version)
            evaluation = final["heldout_accuracy"] if final else None
            if final is None:
                log.warning("the final evaluation did not finish in time", extra={"version": version})
        elif records.evaluation is not None:
            evaluation = await records.evaluate(ctx.progress.version, ctx.progress.step)
        await records.write_record(
            {"final": True, "step": ctx.progress.step, "version": ctx.progress.version,
             "heldout_accuracy": evaluation, "time": time.time()}
        )  # fmt: skip
