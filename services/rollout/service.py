"""The rollout pod process: gRPC server, metrics exporter and the pod loop, with a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from functools import partial

from asympo.runtime.telemetry import start_metrics_server

from .engines import import_ahead
from .metrics import RolloutMetrics
from .pod import RolloutPod
from .server import SERVICE_NAME, grpc_server
from .settings import RolloutSettings

log = logging.getLogger(__name__)


def _log_imports(task: asyncio.Future) -> None:
    if task.cancelled():
        return
    if task.exception() is not None:
        log.warning("importing the engine ahead failed; it is imported when a job starts",
                    extra={"cause": repr(task.exception())})  # fmt: skip
    else:
        log.info("engine library imported", extra={"seconds": round(task.result(), 2)})


class RolloutService:
    """`run()`: serve until SIGTERM/SIGINT, then stop taking tasks, let the batch in flight finish, exit 0."""

    def __init__(self, settings: RolloutSettings):
        self.settings = settings
        self.metrics = RolloutMetrics()
        self.pod = RolloutPod(settings, self.metrics)

    async def run(self) -> int:
        """Start everything, serve, and shut down on a signal; returns the exit code."""
        s = self.settings
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, self.pod.stopping.set)
        metrics_server = (
            start_metrics_server(s.metrics_port, self.metrics.registry, addr=s.host)
            if s.metrics_port >= 0
            else None
        )
        server = grpc_server(self.pod)
        # The rollout service goes NOT_SERVING while its engine serves no verified version; the server's
        # own health ("") stays SERVING: the process is alive and recovers by itself.
        self.pod.health = partial(server.set_serving, SERVICE_NAME)
        port = await server.start()
        log.info(
            "serving",
            extra={
                "pod": s.pod,
                "port": port,
                "metrics_port": metrics_server.port if metrics_server else None,
            },
        )
        imports = asyncio.ensure_future(asyncio.to_thread(import_ahead, s.engine))
        imports.add_done_callback(_log_imports)
        self.pod.imports = imports
        pod_loop = asyncio.ensure_future(self.pod.run())
        stop = asyncio.ensure_future(self.pod.stopping.wait())
        try:
            await asyncio.wait([pod_loop, stop], return_when=asyncio.FIRST_COMPLETED)
            if pod_loop.done():
                pod_loop.result()  # a crash of the loop is a crash of the pod
            else:
                log.info("signal received: finishing the batch in flight", extra={"grace_s": s.grace_s})
                try:
                    await asyncio.wait_for(asyncio.shield(pod_loop), s.grace_s)
                except asyncio.TimeoutError:
                    # Its un-ACKed tasks are reclaimed by peer pods after claim_idle_s.
                    log.warning("batch did not finish within the grace period; leaving it to peers")
                    pod_loop.cancel()
        finally:
            stop.cancel()
            for sig in signals:
                loop.remove_signal_handler(sig)
            await server.stop(1.0)
            if metrics_server is not None:
                await asyncio.to_thread(metrics_server.stop)
        log.info("stopped")
        return 0
