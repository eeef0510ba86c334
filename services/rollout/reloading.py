"""Following the learner's versions on a pod: load the newest, verify what the engine serves, refuse what fails."""

from __future__ import annotations

import asyncio
import logging
import time

from asympo.bus import JobKeys, newest_version
from asympo.proto.v1 import bus_pb2

from .metrics import RolloutMetrics
from .policy import ReloadRefused, RetryGate, materialize, prune_fetched
from .served import ServedModel
from .settings import RolloutSettings
from .status_board import StatusBoard

log = logging.getLogger(__name__)


class Reloader:
    """Brings the served model up to the newest announced version; refused versions are retried with backoff."""

    def __init__(
        self,
        settings: RolloutSettings,
        redis,
        model: ServedModel,
        board: StatusBoard,
        metrics: RolloutMetrics,
    ):
        self.settings = settings
        self.redis = redis
        self.model = model
        self.board = board
        self.metrics = metrics
        self._retry = RetryGate()

    async def reload_newest(self, keys: JobKeys) -> None:
        """Load the newest announced version if it is newer than the one served (refused ones back off)."""
        pv = await newest_version(self.redis, keys)
        served = self.model.version
        if pv is None or served is None or pv.version <= served.version or not self._retry.ready(pv):
            return
        t0 = time.perf_counter()
        await self.board.set_state("reloading")
        try:
            local = await asyncio.to_thread(
                materialize, pv, self.settings.weights_dir, self.settings.learner_target
            )
            await self.model.swap(local)
        except ReloadRefused as exc:
            self._failed(pv, exc.reason, str(exc))
        except Exception as exc:
            self._failed(pv, "engine", f"{type(exc).__name__}: {exc}")
        else:
            self.metrics.reload_seconds.observe(time.perf_counter() - t0)
            await self.board.served_now(local)
            prune_fetched(self.settings.weights_dir, keys.job_id, {local.path, served.path})
            log.info(
                "policy reloaded",
                extra={"version": local.version, "seconds": round(time.perf_counter() - t0, 3)},
            )
            return
        await self.board.set_state("serving")

    def _failed(self, pv: bus_pb2.PolicyVersion, reason: str, message: str) -> None:
        self._retry.failed(pv)
        self.metrics.reload_failures.labels(reason).inc()
        self.board.reload_failed(message)
        log.error(
            "reload refused; still serving the previous version",
            extra={"version": pv.version, "cause": message},
        )
