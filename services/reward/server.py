"""The RewardService gRPC servicer and the service's lifecycle: worker pool, gRPC server, metrics exporter."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import grpc

from asympo.proto.v1 import reward_pb2, reward_pb2_grpc
from asympo.runtime.grpc_server import GrpcServer
from asympo.runtime.telemetry import MetricsServer, start_metrics_server

from . import verifiers
from .metrics import RewardMetrics
from .pool import PoolClosed, WorkerPool
from .scores import TIMEOUT, ScoreResult, error, unparsable
from .settings import MAX_REQUEST_BYTES, RewardSettings

log = logging.getLogger(__name__)

SERVICE_NAME = reward_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name


class InvalidRequest(ValueError):
    """A request the service refuses as a whole (gRPC INVALID_ARGUMENT)."""


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    """Score(): resolve the verifier, score every item in the worker pool, answer in order."""

    def __init__(self, settings: RewardSettings, pool: WorkerPool, metrics: RewardMetrics):
        self.settings = settings
        self.pool = pool
        self.metrics = metrics

    async def Score(self, request: reward_pb2.ScoreRequest, context) -> reward_pb2.ScoreResponse:
        """Score every item of the request with its verifier; one Score per item, in order."""
        t0 = time.perf_counter()
        self.metrics.inflight_requests.inc()
        code = grpc.StatusCode.OK
        try:
            try:
                return await self.score(request)
            except InvalidRequest as e:
                code = grpc.StatusCode.INVALID_ARGUMENT
                await context.abort(code, str(e))
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as e:  # a bug here must fail one request, never the service
                code = grpc.StatusCode.INTERNAL
                log.exception("Score failed")
                await context.abort(code, f"reward service error: {type(e).__name__}: {e}")
        finally:
            self.metrics.requests.labels(code.name).inc()
            self.metrics.inflight_requests.dec()
            self.metrics.request_seconds.observe(time.perf_counter() - t0)

    async def score(self, request: reward_pb2.ScoreRequest) -> reward_pb2.ScoreResponse:
        """The response to `request`, or InvalidRequest."""
        try:
            verifier = verifiers.resolve(request.verifier)
        except verifiers.UnknownVerifierError as e:
            raise InvalidRequest(str(e)) from None
        if request.deadline_ms < 0:
            raise InvalidRequest(
                f"deadline_ms must be >= 0 (0 = the service default), got {request.deadline_ms}"
            )
        if len(request.items) > self.settings.max_items:
            raise InvalidRequest(
                f"{len(request.items)} items in one request; the limit is {self.settings.max_items} "
                "(max_items): split the batch"
            )
        cap = self.settings.max_text_chars
        for i, item in enumerate(request.items):
            for kind, text in (("completion", item.completion), ("reference", item.reference)):
                if len(text) > cap:
                    raise InvalidRequest(
                        f"items[{i}].{kind} has {len(text)} characters; the limit is {cap} (max_text_chars)"
                    )
        deadline_ms = min(
            request.deadline_ms or self.settings.default_deadline_ms, self.settings.max_deadline_ms
        )
        results = await asyncio.gather(
            *(self._score_item(verifier, item, deadline_ms / 1000) for item in request.items)
        )
        return reward_pb2.ScoreResponse(
            scores=[reward_pb2.Score(reward=r.reward, status=r.status, detail=r.detail) for r in results]
        )

    async def _score_item(
        self, verifier: verifiers.Verifier, item: reward_pb2.ScoreItem, deadline_s: float
    ) -> ScoreResult:
        t0 = time.perf_counter()
        self.metrics.inflight_items.inc()
        result = error("not scored")
        try:
            result = await self._run(verifier, item.completion, item.reference, deadline_s)
            return result
        finally:
            self.metrics.inflight_items.dec()
            self.metrics.item_seconds.labels(verifier.name).observe(time.perf_counter() - t0)
            self.metrics.items.labels(verifier.name, result.status).inc()
            if result.status == TIMEOUT:
                self.metrics.timeouts.labels(verifier.name).inc()

    async def _run(self, verifier: verifiers.Verifier, completion: str, reference: str, deadline_s: float):
        cap = self.settings.max_completion_chars
        # Parsers can take superlinear time in the input length; overlong text is refused unread.
        if len(completion) > cap:
            return unparsable(f"completion too long: {len(completion)} chars > {cap}; not parsed")
        if len(reference) > cap:
            return error(f"reference too long: {len(reference)} chars > {cap}")
        # Every verifier, `exact` too, runs in the pool: code on this event loop has no deadline, and one
        # slow item there would stall every request in flight.
        try:
            return await self.pool.score(verifier.name, completion, reference, deadline_s)
        except PoolClosed:
            return error("the reward service is shutting down")


class RewardService:
    """The whole service: `start()` brings up workers, gRPC and metrics; `run()` serves until SIGTERM."""

    def __init__(self, settings: RewardSettings):
        self.settings = settings
        self.metrics = RewardMetrics()
        self.pool: WorkerPool | None = None
        self.grpc: GrpcServer | None = None
        self.metrics_server: MetricsServer | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None

    async def start(self) -> None:
        """Load plugins, start the workers, then the exporter and the gRPC server (health SERVING)."""
        s = self.settings
        verifiers.load_plugins(s.plugins)
        for name in verifiers.registered_names():
            if ":" not in name:  # a plain name (patterns like format:<...> label by their resolved name)
                self.metrics.timeouts.labels(name)  # exported as 0 from the start, so rate() has a baseline
        log.info("starting workers", extra={"workers": s.workers, "start_method": s.start_method})
        self.pool = WorkerPool(
            s.workers,
            plugins=s.plugins,
            start_method=s.start_method,
            on_restart=lambda reason: self.metrics.pool_restarts.labels(reason).inc(),
        )
        await self.pool.start()
        self.metrics.pool_workers.set_function(lambda: self.pool.alive)
        self.metrics.pool_busy.set_function(lambda: self.pool.busy)
        try:
            if s.metrics_port >= 0:
                self.metrics_server = start_metrics_server(s.metrics_port, self.metrics.registry, addr=s.host)
                self.metrics_port = self.metrics_server.port
            options = [("grpc.max_receive_message_length", MAX_REQUEST_BYTES)]
            self.grpc = GrpcServer.for_service(s, options)
            servicer = RewardServicer(s, self.pool, self.metrics)
            self.grpc.add_service(reward_pb2_grpc.add_RewardServiceServicer_to_server, servicer, SERVICE_NAME)
            self.port = await self.grpc.start()
        except BaseException:
            await self.stop(0)
            raise
        log.info(
            "serving",
            extra={
                "port": self.port,
                "metrics_port": self.metrics_port,
                "workers": s.workers,
                "verifiers": verifiers.registered_names(),
            },
        )

    async def stop(self, grace_s: float | None = None) -> None:
        """Refuse new requests, let in-flight ones finish within `grace_s`, then stop the workers."""
        grace_s = self.settings.grace_s if grace_s is None else grace_s
        if self.grpc is not None and self.grpc.port is not None:
            await self.grpc.stop(grace_s)
        closing = []
        if self.pool is not None:
            closing.append(self.pool.close(timeout_s=1.0))
        if self.metrics_server is not None:
            # In a thread, alongside the pool: the exporter's shutdown waits out its 0.5 s poll interval.
            closing.append(asyncio.get_running_loop().run_in_executor(None, self.metrics_server.stop))
            self.metrics_server = None
        await asyncio.gather(*closing)

    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT, shut down gracefully, and return the exit code (0)."""
        # A signal while the workers start (seconds) must also end in a clean exit 0, not the default
        # disposition's abrupt death with the workers half started.
        loop = asyncio.get_running_loop()
        starting = asyncio.ensure_future(self.start())
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, starting.cancel)
        try:
            await starting
        except asyncio.CancelledError:
            log.info("stopped during start-up")
            await self.stop(0)
            return 0
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
        try:
            await self.grpc.serve_until_signal(self.settings.grace_s)
        finally:
            await self.stop(0)
        log.info("stopped")
        return 0
