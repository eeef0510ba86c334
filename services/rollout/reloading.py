"""Following the learner's versions on a pod: load the newest, verify what the engine serves, refuse what fails."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from asympo.bus import JobKeys
from asympo.bus.policy_stream import PolicyReader
from asympo.proto.v1 import bus_pb2
from asympo.runtime.grpc_auth import client_auth

from .metrics import RolloutMetrics
from .peers import peers_holding
from .policy import LocalVersion, ReloadRefused, RetryGate, materialize, prune_fetched
from .served import EngineBroken, ServedModel, failure
from .settings import RolloutSettings
from .status_board import StatusBoard

log = logging.getLogger(__name__)

_RESTART = "restart"  # the RetryGate key of engine restarts (one backoff, whichever version they try)


class Reloader:
    """Brings the served model up to the newest announced version; refused versions are retried with backoff.

    When a reload leaves the engine broken (the previous version could not be put back), the pod serves
    nothing until a new engine, started from scratch on the newest announced version, passes its checks;
    failed restarts back off.
    """

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
        self._restarts = RetryGate()
        # Each announcement is looked at once; what this pod cannot use is dead-lettered with the reason.
        self.policy = PolicyReader(redis, settings.pod)
        # Reload time not yet attributed to a batch (the next batch's groups carry it in Timings.reload_s).
        self.reload_seconds = 0.0

    async def reload_newest(self, keys: JobKeys) -> None:
        """Load the newest announced version if it is newer than the one served (refused ones back off).

        A broken engine is restarted on the newest version instead, when the restart backoff allows.
        """
        pv = await self.policy.newest(keys, self._wanted)
        if pv is None:
            return
        if self.model.broken is not None:
            await self._restart(pv, keys)
            return
        served = self.model.version
        if served is None or pv.version <= served.version or not self._retry.ready(pv):
            return
        t0 = time.perf_counter()
        await self.board.set_state("reloading")
        phases: dict[str, float] = {}
        peers = await peers_holding(self.redis, pv, self.settings.pod)
        try:
            local = await asyncio.to_thread(
                materialize, pv, self.settings.weights_dir, self.settings.learner_target,
                client_auth(self.settings), timings=phases, peers=peers, pod=self.settings.pod,
            )  # fmt: skip
            await self.model.swap(local, phases)
        except EngineBroken as exc:
            self._failed(pv, exc.reason, str(exc))
            self._restarts.failed(_RESTART)  # the first restart waits too: what broke may need a moment
            await self.board.serving_nothing(str(exc))
            await self.policy.refuse(keys, pv, str(exc))
            log.error(
                "the previous version could not be restored; serving nothing until the engine restarts",
                extra={"version": pv.version, "cause": str(exc)},
            )
            return
        except ReloadRefused as exc:
            self._failed(pv, exc.reason, str(exc))
        except Exception as exc:
            self._failed(pv, "engine", failure(exc))
        else:
            for phase, seconds in phases.items():
                self.metrics.reload_phase_seconds.labels(phase).observe(seconds)
            await self._serving(local, t0, keys, {local.path, served.path})
            log.info(
                "policy reloaded",
                extra={"version": local.version, "seconds": round(time.perf_counter() - t0, 3),
                       **{f"{k}_s": round(v, 4) for k, v in phases.items()}},
            )  # fmt: skip
            return
        # Still retried with backoff: a version refused for a passing cause (learner unreachable) loads later.
        await self.policy.refuse(keys, pv, self.board.status.last_error or "reload failed")
        log.error(
            "reload refused; still serving the previous version",
            extra={"version": pv.version, "cause": self.board.status.last_error},
        )
        await self.board.set_state("paused" if self.board.paused else "serving")

    def take(self) -> float:
        """Reload seconds since the last call (a batch's groups carry them)."""
        seconds, self.reload_seconds = self.reload_seconds, 0.0
        return seconds

    def _wanted(self, pv: bus_pb2.PolicyVersion) -> bool:
        # Past announcements refused and backing off, to the newest one worth trying: a refused one must
        # not keep the pod from a real version announced before it. A broken engine takes the newest.
        served = self.model.version
        if self.model.broken is not None or served is None:
            return True
        return pv.version > served.version and self._retry.ready(pv)

    async def _restart(self, pv: bus_pb2.PolicyVersion, keys: JobKeys) -> None:
        if not self._restarts.ready(_RESTART):
            return
        t0 = time.perf_counter()
        try:
            local = await self.model.restart(pv, await peers_holding(self.redis, pv, self.settings.pod))
        except Exception as exc:
            self._restarts.failed(_RESTART)
            self.metrics.reload_failures.labels(getattr(exc, "reason", "engine")).inc()
            message = f"{self.model.broken}; then the restart on v{pv.version} failed ({failure(exc)})"
            self.board.reload_failed(message)
            await self.board.serving_nothing(message)
            log.error(
                "engine restart failed; retrying with backoff",
                extra={"version": pv.version, "cause": message},
            )
            return
        self._restarts.succeeded(_RESTART)
        await self._serving(local, t0, keys, {local.path})
        log.info("serving again after an engine restart", extra={"version": local.version})

    async def _serving(self, local: LocalVersion, t0: float, keys: JobKeys, keep: set[Path]) -> None:
        seconds = time.perf_counter() - t0
        self.metrics.reload_seconds.observe(seconds)
        self.reload_seconds += seconds
        await self.board.served_now(local)
        await asyncio.to_thread(prune_fetched, self.settings.weights_dir, keys.job_id, keep)

    def _failed(self, pv: bus_pb2.PolicyVersion, reason: str, message: str) -> None:
        self._retry.failed(pv)
        self.metrics.reload_failures.labels(reason).inc()
        self.board.reload_failed(message)
