"""The rollout pod: follow the active job, turn PromptTasks into ScoredGroups, hot-reload policy versions.

One loop per pod. Between engine batches it looks at the job (state and control events) and at the
policy stream; a newer version is fetched, verified (sha256, then probe log-probs served by the engine
against the learner's fingerprint), loaded, and the prefix cache reset before the next batch. A batch
is: read up to `batch_prompts` tasks (reclaiming dead pods' idle ones first), generate G completions
per prompt in one engine call, score them with the reward service, then XADD the ScoredGroups and
XACK the tasks in one transaction. Nothing is ACKed before its group is written, so a pod killed at any
point loses no prompt: its pending tasks are reclaimed by a peer after `claim_idle_s`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from asympo.bus import GROUP_ROLLOUT, Delivery, JobKeys, StreamConsumer, connect
from asympo.bus.follow import StreamFollower
from asympo.jobs.records import FINAL_STATES, JobRecord, PodStatus, active_job, get_job
from asympo.proto.v1 import bus_pb2
from asympo.runtime.grpc_auth import client_auth
from services.reward.client import AsyncRewardClient, RewardServiceError

from .batches import BatchProcessor
from .engines import EngineError
from .entry_checks import control_problem
from .evaluation import evaluate
from .metrics import RolloutMetrics
from .peers import peers_holding
from .policy import fetched_jobs, prune_fetched
from .reloading import Reloader
from .served import ServedModel
from .settings import RolloutSettings
from .status_board import StatusBoard, TokenRate

log = logging.getLogger(__name__)


class RolloutPod:
    """The pod's loop over jobs; the served model, reloads, batches and its record are its parts."""

    def __init__(self, settings: RolloutSettings, metrics: RolloutMetrics | None = None):
        self.settings = settings
        self.metrics = metrics or RolloutMetrics()
        self.model = ServedModel(settings)
        self.rate = TokenRate()
        self.stopping = asyncio.Event()
        self.job: JobRecord | None = None
        self.redis: aioredis.Redis | None = None
        self.reward: AsyncRewardClient | None = None
        # Reports the rollout service's gRPC health (set by the process that serves it).
        self.health: Callable[[bool], Awaitable[None]] | None = None
        # The engine library being imported ahead (engines.import_ahead): a job waits for it, since
        # transformers' lazy imports are not safe from two threads at once.
        self.imports: asyncio.Future | None = None

    # ---- lifecycle -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve jobs until `stopping` is set."""
        self.redis = connect(self.settings.redis_url)
        self.reward = AsyncRewardClient(
            self.settings.reward_target, parallelism=4, auth=client_auth(self.settings)
        )
        self.board = StatusBoard(
            self.redis, self.metrics, self.rate, self.health, advertise=self.settings.advertise_address
        )
        self.reloader = Reloader(self.settings, self.redis, self.model, self.board, self.metrics)
        self.batches = BatchProcessor(
            self.settings, self.model, self.reward, self.board, self.metrics, self.pause
        )
        self.batches.reloads = self.reloader
        try:
            while not self.stopping.is_set():
                job = await self._wait_for_job()
                if job is None:
                    break
                try:
                    await self._serve_job(job)
                except Exception:
                    # One job going wrong (a model vLLM cannot load, a lost Redis) must not end the pod.
                    log.exception(
                        "serving the job failed; looking for work again", extra={"job_id": job.job_id}
                    )
                    await self.board.set_state(
                        "unhealthy", last_error="serving the job failed; see the pod log"
                    )
                    await self.pause(self.settings.poll_s * 5)
                finally:
                    await self.model.release()
                    await self.board.set_health(True)  # no engine in an unknown state any more
                    self.job = self.batches.job = None
                    self.metrics.served_version.set(-1)
        finally:
            await self.reward.close()
            await self.redis.aclose()

    async def pause(self, seconds: float) -> None:
        """Wait `seconds`, or less if the pod is asked to stop."""
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _wait_for_job(self) -> JobRecord | None:
        while not self.stopping.is_set():
            try:
                if self.settings.job_id:
                    job = await get_job(self.redis, self.settings.job_id)
                    job = job if job and job.state not in FINAL_STATES and job.state != "queued" else None
                else:
                    job = await active_job(self.redis)
            except OSError as exc:
                log.warning("cannot read jobs from Redis; retrying", extra={"cause": str(exc)})
                job = None
            if job is not None:
                return job
            await self.pause(self.settings.poll_s)
        return None

    # ---- one job ---------------------------------------------------------------------------------

    async def _serve_job(self, job: JobRecord) -> None:
        s = self.settings
        if self.imports is not None:
            await asyncio.wait([self.imports])  # its failure is logged; the engine start then says more
        keys = JobKeys(job.job_id)
        self.job = self.batches.job = job
        await self.board.open(PodStatus(pod=s.pod, job_id=job.job_id, engine=s.engine, state="loading"))
        log.info("following job", extra={"job_id": job.job_id})
        # Earlier events are history: the job record holds their outcome (checked on every look).
        self.control = StreamFollower(
            self.redis, keys.control, bus_pb2.ControlEvent, job.job_id, skips=self.reloader.policy.skips
        )
        await self.control.skip_to_end()
        await self._prune_jobs_over()
        first = await self._wait_for_version(keys)
        if first is None:
            return
        await self._start_engine(first)
        consumer = StreamConsumer(
            self.redis, keys.prompts, GROUP_ROLLOUT, s.pod, bus_pb2.PromptTask, dead_stream=keys.dead,
            job_id=job.job_id, claim_idle_s=s.claim_idle_s, max_deliveries=s.max_deliveries, flow_key=keys.flow,
        )  # fmt: skip
        await consumer.ensure_group()
        evals = StreamConsumer(
            self.redis, keys.evals, GROUP_ROLLOUT, s.pod, bus_pb2.EvalTask, dead_stream=keys.dead,
            job_id=job.job_id, claim_idle_s=s.claim_idle_s, max_deliveries=s.max_deliveries,
        )  # fmt: skip
        await evals.ensure_group()
        backlog = await consumer.recover_own()  # tasks this pod name held before a restart
        eval_backlog = await evals.recover_own()
        next_check = 0.0
        heartbeat = asyncio.ensure_future(self.board.heartbeat(s.heartbeat_s))
        try:
            while not self.stopping.is_set():
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + s.poll_s
                    if not await self._job_still_on(keys):
                        return
                    await self.reloader.reload_newest(keys)
                if self.board.paused or self.board.unhealthy:
                    await self.pause(s.poll_s)
                    continue
                # Evaluation first: its version is current now, and the learner waits for it at the end.
                pending_evals, eval_backlog = eval_backlog or await evals.read(1, block_ms=0), []
                for delivery in pending_evals:
                    await self._evaluate(evals, keys, delivery)
                if pending_evals:
                    continue
                batch, backlog = backlog[: s.batch_prompts], backlog[s.batch_prompts :]
                if not batch:
                    batch = await consumer.read(s.batch_prompts, block_ms=int(min(s.poll_s, 2.0) * 1000))
                if batch:
                    if self.model.behind(max(d.message.dispatch_version for d in batch)):
                        # Dispatched against a version this pod has not loaded yet: load it first, or the
                        # groups would start out staler than the learner's admission control intended.
                        await self.reloader.reload_newest(keys)
                    await self.batches.process(consumer, keys, batch)
        finally:
            heartbeat.cancel()
            await self.board.set_state("stopped")

    async def _prune_jobs_over(self) -> None:
        """Drop fetched copies of jobs that are over (left by a pod killed before its job ended)."""
        for job_id in fetched_jobs(self.settings.weights_dir):
            job = await get_job(self.redis, job_id)
            if job is None or job.state in FINAL_STATES:
                await asyncio.to_thread(prune_fetched, self.settings.weights_dir, job_id)

    async def _wait_for_version(self, keys: JobKeys) -> bus_pb2.PolicyVersion | None:
        """The newest published version; version 0 (the base model) is published by the learner at start."""
        while not self.stopping.is_set():
            pv = await self.reloader.policy.newest(keys)
            if pv is not None:
                return pv
            if not await self._job_still_on(keys):
                return None
            await self.pause(self.settings.poll_s)
        return None

    async def _start_engine(self, pv: bus_pb2.PolicyVersion) -> None:
        t0 = time.perf_counter()
        local = await self.model.start(pv, await peers_holding(self.redis, pv, self.settings.pod))
        self.board.status.engine = self.model.engine.name
        await self.board.served_now(local)
        self.metrics.reload_seconds.observe(time.perf_counter() - t0)
        log.info(
            "engine started",
            extra={"engine": self.model.engine.name, "version": local.version,
                   "seconds": round(time.perf_counter() - t0, 2)},
        )  # fmt: skip

    async def _evaluate(self, consumer: StreamConsumer, keys: JobKeys, delivery: Delivery) -> None:
        try:
            await evaluate(self, consumer, keys, delivery)
        except (EngineError, RewardServiceError, ValueError, RuntimeError) as exc:
            # Left pending: retried (here or by a peer) until max_deliveries dead-letters it with its reason.
            log.error("evaluation task failed", extra={"entry": delivery.entry_id, "cause": str(exc)})

    async def _job_still_on(self, keys: JobKeys) -> bool:
        """Apply control events and the job record's state; False when the job is over for this pod."""
        events = await self.control.read_entries()
        # Read after the events: the gateway changes the record before it announces the change.
        job = await get_job(self.redis, keys.job_id)
        for entry_id, event in events:
            problem = control_problem(event, job)
            if problem:
                await self.control.skip(entry_id, event, problem)
            elif event.kind in ("pause", "resume"):
                self.board.set_paused(event.kind == "pause")
        if job is None or job.state in FINAL_STATES:
            log.info("job is over", extra={"job_id": keys.job_id, "state": job.state if job else "deleted"})
            return False
        self.board.set_paused(job.state == "paused")
        self.job = self.batches.job = job
        return True
