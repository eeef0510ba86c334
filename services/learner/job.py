"""One job on the learner: load, publish version 0, train step by step, publish, checkpoint, finish.

All ranks run `JobRun.run()` together. Rank 0 also dispatches prompts (in the background, so rollout
pods keep generating while a step trains), keeps the job's Redis footprint bounded (housekeeping),
follows the job record (state, live knobs), publishes versions and commits the step records. Every
step starts with rank 0 broadcasting what to do (train, pause, stop) and the live knobs, so all ranks
always agree. The order of a step's effects and what a restart makes of each is in commits.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import torch

from asympo.bus import GROUP_LEARNER, GROUP_ROLLOUT, Fence, Fenced, StreamConsumer, read_flow
from asympo.bus.stream_io import undelivered
from asympo.jobs.records import JobRecord
from asympo.models.loading import load_policy, resolve_model_path
from asympo.models.prompts import Prompter
from asympo.proto.v1 import bus_pb2

from . import distributed as D
from . import failpoints
from .admission import Admission, group_limits
from .commits import VersionCommits
from .control import JobControl, JobFailure
from .dispatcher import Dispatcher
from .evaluation import LearnerEvaluation, RolloutEvaluation
from .housekeeping import Housekeeping
from .job_context import JobContext, Progress
from .metrics import LearnerMetrics
from .publication import Publication
from .settings import LearnerSettings
from .step_records import StepRecords, pod_phase_sums
from .trainer import Trainer, shard_model

log = logging.getLogger(__name__)

# Steps in a row whose loss or gradient was not finite (each skipped, its groups dropped) before the job
# fails: a single bad batch recovers at once, a model that keeps diverging would otherwise loop forever.
MAX_NONFINITE_STEPS = 10


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
        self, settings: LearnerSettings, world: D.World, redis, job: JobRecord, metrics: LearnerMetrics,
        fence: Fence | None = None,
    ):  # fmt: skip
        self.ctx = JobContext(settings, world, redis, job.job_id, job.spec, metrics, fence)
        self.control = JobControl(self.ctx, job, on_knob=self._knob_changed)
        self.dispatcher: Dispatcher | None = None
        self.records: StepRecords | None = None  # the parts below exist once the model is loaded
        self.commits: VersionCommits | None = None
        # Set when a step commits (fewer prompts in flight): the dispatcher refills at once instead of at
        # its next poll, which would idle the pods at low staleness.
        self.wake_dispatcher = asyncio.Event()
        self._background: list[asyncio.Task] = []
        self.attempts = 0  # optimizer steps tried by this process, skipped ones included
        self.nonfinite_run = 0  # skipped steps since the last applied one
        # Set when a background task finds that a newer learner took the job: the run stops at once.
        self.fenced: Fenced | None = None

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
            ctx.settings.micro_batch_rows, ctx.settings.micro_batch_tokens, spec.eval.gauges_every,
        )  # fmt: skip
        publisher = (await asyncio.to_thread(load_policy, path, "float32", "cpu"))[0] if w.is_main else None
        self.policy = LoadedPolicy(model, optimizer, tokenizer, prompter, trainer, publisher)
        consumer = StreamConsumer(
            ctx.redis, ctx.keys.groups, GROUP_LEARNER, f"rank{w.rank}", bus_pb2.ScoredGroup,
            dead_stream=ctx.keys.dead, job_id=ctx.job_id, claim_idle_s=10**7, flow_key=ctx.keys.flow,
        )  # fmt: skip
        self.admission = Admission(ctx, consumer, self.control, group_limits(model, spec), trainer.behavior)
        evaluation = None
        if w.is_main and spec.eval.every:
            if spec.eval_engine() == "rollout":
                evaluation = RolloutEvaluation(ctx.redis, ctx.job_id, spec, prompter, ctx.ledger)
            else:
                evaluation = LearnerEvaluation(spec, publisher, prompter)
        self.records = StepRecords(ctx, evaluation)
        self.commits = VersionCommits(ctx, self.policy, self.admission, self.records, self.control)
        self.publication = Publication(ctx, self.commits, self.records, self._committed)

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
            evaluation = self.records.evaluation
            if isinstance(evaluation, RolloutEvaluation):
                # After a roll-back, evaluations of the superseded versions are no longer awaited.
                await evaluation.resume(self.commits.superseded)
                self._background.append(
                    asyncio.ensure_future(self._guard(self.records.collect_evals_forever()))
                )
            self.dispatcher = Dispatcher(ctx.redis, ctx.job_id, ctx.spec, self.policy.prompter, ctx.fence)
            self.housekeeping = Housekeeping(ctx, self.admission, self.dispatcher)
            self._background.append(asyncio.ensure_future(self._guard(self._dispatch_forever())))
            job = await self.control.start()  # a job paused or cancelled while starting stays so
            log.info("job started", extra={"job": ctx.job_id, "state": job.state if job else None})
        try:
            while ctx.progress.step < algo.steps:
                if self.fenced is not None:
                    raise self.fenced
                await self.publication.raise_failure()
                decision = await self.control.decide()
                if decision.action == "stop":
                    await self.publication.wait()
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
            if self.commits is not None:
                self.publication.cancel()  # only left running when the run fails: as a crash would
            self._stop_background()
            ctx.metrics.job_active.set(0)

    def _stop_background(self) -> None:
        for task in self._background:
            task.cancel()
        self._background = []

    async def _guard(self, work) -> None:
        """Run a background task; a Fenced error there stops the whole run instead of being retried."""
        try:
            await work
        except Fenced as exc:
            log.error("a newer learner holds the job; stopping", extra={"cause": str(exc)})
            self.fenced = exc
            self.ctx.stopping.set()

    async def _dispatch_forever(self) -> None:
        ctx, s = self.ctx, self.ctx.settings
        next_housekeeping = 0.0
        while True:
            try:
                running = await self.control.running()
                if running:
                    ctx.metrics.dispatched.inc(await self.dispatcher.fill(ctx.progress.version))
                ctx.metrics.job_active.set(1 if running else 0)
                flow = await read_flow(ctx.redis, ctx.keys)
                ctx.metrics.in_flight.set(flow.in_flight)
                ctx.metrics.prompt_backlog.set(await undelivered(ctx.redis, ctx.keys.prompts, GROUP_ROLLOUT))
                if time.monotonic() >= next_housekeeping:
                    next_housekeeping = time.monotonic() + s.housekeeping_s
                    await self.housekeeping.run_once()
            except (asyncio.CancelledError, Fenced):
                raise
            except Exception:
                log.exception("dispatching failed; retrying")
            try:
                await asyncio.wait_for(self.wake_dispatcher.wait(), s.poll_s)
            except asyncio.TimeoutError:
                pass
            self.wake_dispatcher.clear()

    async def _step(self) -> bool:
        """Train one step on every rank and start its publication; False if it did not happen."""
        ctx, w = self.ctx, self.ctx.world
        per_rank = ctx.spec.algorithm.prompts_per_step // w.size
        t0 = time.perf_counter()
        ready = await self.admission.collect(per_rank)
        if await asyncio.to_thread(D.all_min, 1.0 if ready else 0.0, w) < 1:
            return False  # someone's job paused or stopped mid-collection; the buffers are kept
        timeline = {"wait_groups": time.perf_counter() - t0}
        batch, read_tokens = self.admission.take(per_rank)
        groups = [d.message for d in batch]
        staleness = [ctx.staleness(g.gen_version_start) for g in groups]
        self.attempts += 1
        t1 = time.perf_counter()
        fault, trainer = failpoints.injected(self.attempts), self.policy.trainer
        stats = await asyncio.to_thread(trainer.step, groups, fault, ctx.progress.step + 1, staleness)
        timeline["train"] = time.perf_counter() - t1
        if stats.get("skipped"):
            await self._skipped(batch, stats)
            return True
        self.nonfinite_run = 0
        ctx.progress.step += 1
        step, algo = ctx.progress.step, ctx.spec.algorithm
        entries = [d.entry_id for d in batch]
        trained = await asyncio.to_thread(
            D.gather, ([g.prompt_id for g in groups], staleness, read_tokens, entries, pod_phase_sums(groups)), w
        )  # fmt: skip
        # One publication in flight at most: the previous step's must be out before this one's starts.
        timeline["wait_publication"] = await self.publication.wait()
        failpoints.reach("after_train", step)  # every earlier step committed, none of this one's effects yet
        state = await self.publication.snapshot(step % algo.sync_every == 0 or step == algo.steps, timeline)
        self.publication.start(state, stats, trained, timeline, t0)
        if ctx.spec.checkpoint.every and step % ctx.spec.checkpoint.every == 0:
            await self.publication.wait()
            await self.commits.checkpoint()
        return True

    async def _committed(self, step: int) -> None:
        """After step `step`'s commit (rank 0): progress on the job record, housekeeping, more prompts at once."""
        await self.control.record_progress(step)
        await self.housekeeping.trained()
        self.wake_dispatcher.set()

    async def _skipped(self, batch, stats: dict) -> None:
        """A step whose loss or gradient was not finite on some rank: nothing applied, its groups dropped."""
        ctx = self.ctx
        self.nonfinite_run += 1
        ctx.metrics.steps_skipped.inc()
        await self.publication.wait()  # records stay in step order
        await self.admission.discard(batch, "non_finite")
        record = {"skipped": True, "step": ctx.progress.step + 1, "version": ctx.progress.version,
                  "cause": stats["cause"], "consecutive": self.nonfinite_run, "time": time.time()}  # fmt: skip
        log.warning("step skipped: non-finite loss or gradient; its groups are dropped", extra=record)
        if ctx.world.is_main:
            await self.records.write_record(record)
        if self.nonfinite_run >= MAX_NONFINITE_STEPS:
            raise JobFailure(
                f"{self.nonfinite_run} steps in a row had a {stats['cause']} and were skipped (at most "
                f"{MAX_NONFINITE_STEPS}); the model or its data diverge: lower algorithm.lr or check the rewards"
            )

    async def _finish(self) -> None:
        ctx, records = self.ctx, self.records
        await self.publication.wait()
        await self.commits.checkpoint()
        if not ctx.world.is_main:
            return
        self._stop_background()  # no more dispatching; from here on this method collects evaluations itself
        evaluation = None
        if isinstance(records.evaluation, RolloutEvaluation):
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
        unused = await ctx.ledger.close_flow()
        flow = await read_flow(ctx.redis, ctx.keys)
        await records.write_record(
            {"final": True, "step": ctx.progress.step, "version": ctx.progress.version,
             "heldout_accuracy": evaluation, "time": time.time(), "unused_prompts": unused,
             "flow": {"dispatched": flow.dispatched, "trained": flow.trained, "dropped": flow.dropped}}
        )  # fmt: skip
