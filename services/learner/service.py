"""The learner process: find a job, run it on every rank, record how it ended; gRPC and metrics on rank 0.

Rank 0 chooses the job (the active one first, so a restarted learner resumes it; else the head of
`asympo:queue`) and broadcasts it; all ranks then run it together. SIGTERM finishes the step in
progress, checkpoints and exits 0 with the job left `running` for the next learner. A job that raises
is marked `failed` with the error and the process exits 1 (under torchrun, ranks of a failed
collective cannot go on safely); a lost Redis connection exits 1 without failing the job.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from transformers.utils import logging as transformers_logging

from asympo.bus import QUEUE, connect
from asympo.jobs.records import FINAL_STATES, JobRecord, active_job, get_job, put_job
from asympo.proto.v1 import learner_pb2_grpc
from asympo.runtime.grpc_server import GrpcServer
from asympo.runtime.telemetry import start_metrics_server

from . import distributed as D
from .job import JobRun
from .metrics import LearnerMetrics
from .server import SERVICE_NAME, LearnerServicer
from .settings import LearnerSettings

log = logging.getLogger(__name__)


class LearnerService:
    """`run()`: take jobs one at a time until told to stop (or idle, with exit_when_idle)."""

    def __init__(self, settings: LearnerSettings):
        self.settings = settings
        self.metrics = LearnerMetrics()
        self.current: JobRun | None = None
        self.stopping = asyncio.Event()

    def _on_signal(self) -> None:
        self.stopping.set()
        if self.current is not None:
            self.current.stopping.set()

    async def run(self) -> int:
        """Serve and train; returns the process exit code."""
        s = self.settings
        # A progress bar per published version would drown the JSON logs.
        transformers_logging.disable_progress_bar()
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
                grpc_server = GrpcServer(s.host, s.port)
                grpc_server.add_service(
                    learner_pb2_grpc.add_LearnerServiceServicer_to_server,
                    LearnerServicer(s, lambda: self.current),
                    SERVICE_NAME,
                )
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

    async def _serve_jobs(self, world: D.World, redis) -> int:
        s = self.settings
        while True:
            choice = await self._choose(world, redis) if world.is_main else None
            action, job_id = await asyncio.to_thread(D.broadcast, choice, world)
            if action == "stop":
                return 0
            if action == "wait":
                await asyncio.sleep(s.poll_s)
                continue
            job = await get_job(redis, job_id)
            self.current = JobRun(s, world, redis, job, self.metrics)
            if self.stopping.is_set():
                self.current.stopping.set()
            try:
                outcome = await self._run_with_grace(self.current)
                if outcome is None:
                    log.error("the step in progress did not finish within grace_s; exiting without a checkpoint",
                              extra={"grace_s": s.grace_s, "job": job_id})  # fmt: skip
                    return 1  # the next learner resumes from the previous LATEST
            except (RedisConnectionError, RedisTimeoutError, ConnectionError) as exc:
                log.error(
                    "lost Redis; exiting so the job resumes on restart",
                    extra={"job": job_id, "cause": str(exc)},
                )
                return 1
            except Exception as exc:
                log.exception("job failed", extra={"job": job_id})
                await self._mark(redis, job_id, "failed", f"{type(exc).__name__}: {exc}")
                return 1
            log.info("job ended", extra={"job": job_id, "state": outcome, "step": self.current.progress.step})
            if world.is_main and outcome == "succeeded":
                await self._mark(redis, job_id, "succeeded", "")
            if outcome == "running" or s.exit_when_idle or s.job_id:
                return 0  # shutdown (the job resumes in the next learner), or a one-job run

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

    async def _choose(self, world: D.World, redis) -> tuple[str, str | None]:
        """Rank 0: ('job', id) to run, ('wait', None) for nothing yet, ('stop', None) to exit."""
        s = self.settings
        if self.stopping.is_set():
            return "stop", None
        if s.job_id:
            job = await get_job(redis, s.job_id)
            if job is None:
                raise ValueError(f"job {s.job_id!r} does not exist")
            if job.state in FINAL_STATES:
                log.info("job already ended", extra={"job": job.job_id, "state": job.state})
                return "stop", None
            await redis.lrem(QUEUE, 0, job.job_id)
            return "job", job.job_id
        job = await active_job(redis)
        if job is not None:
            log.info("resuming the active job", extra={"job": job.job_id, "state": job.state})
            return "job", job.job_id
        while (raw := await redis.lpop(QUEUE)) is not None:
            job_id = raw.decode() if isinstance(raw, bytes) else raw
            job = await get_job(redis, job_id)
            if job is not None and job.state == "queued":
                return "job", job_id
            log.warning(
                "queue entry skipped", extra={"job": job_id, "state": job.state if job else "missing"}
            )
        return ("stop", None) if s.exit_when_idle else ("wait", None)

    async def _mark(self, redis, job_id: str, state: str, message: str) -> None:
        job: JobRecord | None = await get_job(redis, job_id)
        if job is None or (job.state in FINAL_STATES and job.state != state):
            return
        job.state, job.message = state, message or job.message
        if self.current is not None:
            job.step, job.version = self.current.progress.step, self.current.progress.version
        await put_job(redis, job)
