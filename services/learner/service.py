"""The learner process: find a job, hold its lease, run it on every rank, record how it ended.

Rank 0 chooses the job (the active one first, so a restarted learner resumes it; else the head of
`asympo:queue`) and takes the job's lease (asympo.bus.fence) before touching it; a job whose lease a
live learner holds is waited for, not shared. The lease's fencing token goes to every rank, and every
write to the job checks it. Acquiring a lease whose previous holder never released it counts a crash:
past `restart_budget` the job is failed with that cause instead of being resumed forever. SIGTERM
finishes the step in progress, checkpoints, releases the lease and exits 0 with the job left `running`
for the next learner. A job that raises is marked `failed` with the error and the process exits 1
(under torchrun, ranks of a failed collective cannot go on safely); a lost Redis connection exits 1
without failing the job. When a job ends its report is stored and its keys expire (asympo.jobs.retention).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import torch
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from transformers.utils import logging as transformers_logging

from asympo.bus import QUEUE, Fence, Fenced, JobKeys, JobLease, connect
from asympo.bus.fence import Held, holder_is_dead
from asympo.jobs.path_roots import PathNotAllowed, check_job_paths
from asympo.jobs.records import FINAL_STATES, JobRecord, active_job, get_job
from asympo.jobs.retention import finish_ended_jobs, finish_job
from asympo.jobs.states import TransitionRefused, requeue_lost, transition
from asympo.runtime.telemetry import start_metrics_server

from . import distributed as D
from .job import JobRun
from .metrics import LearnerMetrics
from .server import grpc_server as learner_grpc_server
from .settings import LearnerSettings

log = logging.getLogger(__name__)


class LearnerService:
    """`run()`: take jobs one at a time until told to stop (or idle, with exit_when_idle)."""

    def __init__(self, settings: LearnerSettings):
        self.settings = settings
        self.metrics = LearnerMetrics()
        self.current: JobRun | None = None
        self.lease: JobLease | None = None
        self.stopping = asyncio.Event()
        self._waiting_for: str = ""  # the holder last reported as keeping a job from us

    def _on_signal(self) -> None:
        self.stopping.set()
        if self.current is not None:
            self.current.stopping.set()

    async def run(self) -> int:
        """Serve and train; returns the process exit code."""
        s = self.settings
        # A progress bar per published version would drown the JSON logs.
        transformers_logging.disable_progress_bar()
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)
        world = await asyncio.to_thread(D.init_world, s.device)
        redis = connect(s.redis_url)
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal)
        grpc_server = metrics_server = None
        code = 1
        try:
            if world.is_main:
                if s.metrics_port >= 0:
                    metrics_server = start_metrics_server(s.metrics_port, self.metrics.registry, addr=s.host)
                grpc_server = learner_grpc_server(s, lambda: self.current)
                port = await grpc_server.start()
                log.info(
                    "serving",
                    extra={
                        "port": port,
                        "metrics_port": metrics_server.port if metrics_server else None,
                        "world_size": world.size,
                        "device": str(world.device),
                    },
                )
                await self._tidy(redis)
            code = await self._serve_jobs(world, redis)
            return code
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            if grpc_server is not None:
                await grpc_server.stop(1.0)
            if metrics_server is not None:
                await asyncio.to_thread(metrics_server.stop)
            await redis.aclose()
            D.shutdown(together=code == 0)
            log.info("stopped")

    async def _tidy(self, redis) -> None:
        """Repair what a crash may have left: queued jobs outside the queue, ended jobs without a report."""
        for job_id in await requeue_lost(redis):
            log.warning("a queued job was not in the queue; queued it again", extra={"job": job_id})
        await finish_ended_jobs(redis, self.settings.retention_s, Path(self.settings.checkpoint_dir))

    async def _serve_jobs(self, world: D.World, redis) -> int:
        s = self.settings
        while True:
            choice = await self._choose(world, redis) if world.is_main else None
            action, job_id, token = await asyncio.to_thread(D.broadcast, choice, world)
            if action == "stop":
                return 0
            if action == "wait":
                await asyncio.sleep(s.poll_s)
                continue
            job = await get_job(redis, job_id)
            fence = Fence(JobKeys(job_id).lease, token)
            self.current = JobRun(s, world, redis, job, self.metrics, fence)
            if self.stopping.is_set():
                self.current.stopping.set()
            renewer = asyncio.ensure_future(self._renew_forever()) if world.is_main else None
            try:
                outcome = await self._run_with_grace(self.current)
                if outcome is None:
                    log.error("the step in progress did not finish within grace_s; exiting without a checkpoint",
                              extra={"grace_s": s.grace_s, "job": job_id})  # fmt: skip
                    return 1  # the next learner resumes from the newest checkpoint
            except Fenced as exc:
                log.error("another learner took the job over; exiting without touching it",
                          extra={"job": job_id, "cause": str(exc)})  # fmt: skip
                return 1
            except (RedisConnectionError, RedisTimeoutError, ConnectionError) as exc:
                log.error(
                    "lost Redis; exiting so the job resumes on restart",
                    extra={"job": job_id, "cause": str(exc)},
                )
                return 1
            except Exception as exc:
                log.exception("job failed", extra={"job": job_id})
                if world.is_main:
                    await self._end(redis, job_id, "failed", f"{type(exc).__name__}: {exc}")
                return 1
            finally:
                if renewer is not None:
                    renewer.cancel()
            log.info("job ended", extra={"job": job_id, "state": outcome, "step": self.current.progress.step})
            if world.is_main:
                if outcome in FINAL_STATES:
                    await self._end(redis, job_id, outcome, "")
                else:
                    await self.lease.release(clean=True)  # shut down on purpose: not a crash
            if outcome == "running" or s.exit_when_idle or s.job_id:
                return 0  # shutdown (the job resumes in the next learner), or a one-job run

    async def _renew_forever(self) -> None:
        """Renew the job lease a few times per TTL; losing it stops the run at once."""
        while True:
            await asyncio.sleep(self.settings.lease_ttl_s / 3)
            try:
                await self.lease.renew()
            except Fenced as exc:
                log.error("the job lease was taken over", extra={"cause": str(exc)})
                self.current.fenced = exc
                self.current.stopping.set()
                return
            except (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError) as exc:
                log.warning("could not renew the job lease; retrying", extra={"cause": str(exc)})

    async def _end(self, redis, job_id: str, state: str, message: str) -> None:
        """Record how the job ended (unless a user's cancel came first), store its report, release it."""
        fence = self.lease.fence
        run = self.current
        extra = {"step": run.progress.step, "version": run.progress.version} if run is not None else {}
        try:
            job = await transition(redis, job_id, state, message=message or None, fence=fence, **extra)
        except TransitionRefused:
            job = await get_job(redis, job_id)  # e.g. cancelled while the last step ran
        if job is not None and job.state in FINAL_STATES:
            archive = Path(self.settings.checkpoint_dir) / job_id / "report"
            await finish_job(redis, job, self.settings.retention_s, archive, fence)
        await self.lease.release(clean=True)

    async def _run_with_grace(self, run: JobRun) -> str | None:
        """The run's outcome; None if, after SIGTERM, it did not stop within grace_s."""
        task = asyncio.ensure_future(run.run())
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                log.info(
                    "signal received: finishing the step and checkpointing",
                    extra={"grace_s": self.settings.grace_s},
                )
                try:
                    await asyncio.wait_for(asyncio.shield(task), self.settings.grace_s)
                except asyncio.TimeoutError:
                    task.cancel()
                    return None
            return task.result()
        finally:
            stop.cancel()

    async def _choose(self, world: D.World, redis) -> tuple[str, str | None, str | None]:
        """Rank 0: ('job', id, token) to run, ('wait', ..) for nothing yet, ('stop', ..) to exit."""
        s = self.settings
        if self.stopping.is_set():
            return "stop", None, None
        if s.job_id:
            job = await get_job(redis, s.job_id)
            if job is None:
                raise ValueError(f"job {s.job_id!r} does not exist")
            if job.state in FINAL_STATES:
                log.info("job already ended", extra={"job": job.job_id, "state": job.state})
                return "stop", None, None
        else:
            job = await active_job(redis) or await self._next_queued(redis)
        if job is None:
            return ("stop", None, None) if s.exit_when_idle else ("wait", None, None)
        lease = JobLease(redis, JobKeys(job.job_id).lease, s.lease_ttl_s)
        grant = await lease.acquire()
        if isinstance(grant, Held) and holder_is_dead(grant.holder):
            grant = await lease.acquire(take_from=grant.holder)  # a learner of this host that is gone
        if isinstance(grant, Held):
            if self._waiting_for != grant.holder:
                self._waiting_for = grant.holder
                log.info("the job is held by another learner; waiting", extra={"job": job.job_id,
                         "holder": grant.holder, "expires_in_s": round(grant.expires_in_s, 1)})  # fmt: skip
            return "wait", None, None
        self._waiting_for, self.lease, self.current = "", lease, None
        self.metrics.job_restarts.set(grant.crashes)
        if grant.crashes > s.restart_budget:
            message = (
                f"the learner stopped without shutting down {grant.crashes} times while running this job "
                f"(restart budget {s.restart_budget}; last at step {job.step}, version {job.version}); a "
                "learner killed by the kernel for lack of memory looks like this: see the learner's logs"
            )
            log.error(
                "restart budget exhausted; failing the job",
                extra={"job": job.job_id, "crashes": grant.crashes},
            )
            await self._end(redis, job.job_id, "failed", message)
            await redis.lrem(QUEUE, 0, job.job_id)
            return "wait", None, None
        try:
            # The gateway checked too, but against its own roots: this learner reads the files.
            check_job_paths(job.spec)
        except PathNotAllowed as exc:
            log.error("job refused", extra={"job": job.job_id, "cause": str(exc)})
            await self._end(redis, job.job_id, "failed", str(exc))
            await redis.lrem(QUEUE, 0, job.job_id)
            return "wait", None, None
        if grant.crashes:
            log.warning("resuming a job whose learner died", extra={"job": job.job_id, "crashes": grant.crashes,
                        "previous": grant.previous})  # fmt: skip
        if job.state == "queued":
            try:
                await transition(redis, job.job_id, "starting", fence=lease.fence)
            except TransitionRefused:  # cancelled in the meantime
                await lease.release(clean=True)
                await redis.lrem(QUEUE, 0, job.job_id)
                return "wait", None, None
            await redis.lrem(QUEUE, 0, job.job_id)
        elif s.job_id:
            await redis.lrem(QUEUE, 0, job.job_id)
        log.info("taking the job", extra={"job": job.job_id, "state": job.state, "token": grant.token})
        return "job", job.job_id, lease.fence.token

    async def _next_queued(self, redis) -> JobRecord | None:
        """The queue's first job that is still queued (entries of jobs that are not are dropped)."""
        while (raw := await redis.lindex(QUEUE, 0)) is not None:
            job_id = raw.decode() if isinstance(raw, bytes) else raw
            job = await get_job(redis, job_id)
            if job is not None and job.state == "queued":
                return job
            log.warning(
                "queue entry skipped", extra={"job": job_id, "state": job.state if job else "missing"}
            )
            await redis.lrem(QUEUE, 1, job_id)
        return None
