"""What a rollout pod tells the world about itself: its pod record in Redis, pause state and heartbeat."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from asympo.jobs.records import PodStatus, put_pod

from .metrics import RolloutMetrics
from .peers import PeerRecord, held_versions
from .policy import LocalVersion

log = logging.getLogger(__name__)


class TokenRate:
    """Generated tokens per second over a sliding window."""

    def __init__(self, window_s: float = 30.0):
        self.window_s = window_s
        self._events: list[tuple[float, int]] = []

    def add(self, tokens: int) -> None:
        """Count tokens generated now."""
        self._events.append((time.monotonic(), tokens))

    def per_s(self) -> float:
        """Tokens per second over the window (0 with nothing in it)."""
        now = time.monotonic()
        self._events = [(t, n) for t, n in self._events if now - t <= self.window_s]
        if not self._events:
            return 0.0
        return sum(n for _, n in self._events) / max(1.0, now - self._events[0][0])


class StatusBoard:
    """The pod's PodStatus record: state, served version, counters; written on changes and by heartbeat.

    With an `advertise` address (--advertise-address) the record also names it and the versions this pod
    holds fetched (services.rollout.peers.PeerRecord), so peers can fetch them from here.
    """

    def __init__(
        self, redis, metrics: RolloutMetrics, rate: TokenRate,
        health: Callable[[bool], Awaitable[None]] | None = None, advertise: str = "",
    ):  # fmt: skip
        self.redis = redis
        self.metrics = metrics
        self.rate = rate
        self.health = health  # sets the gRPC health of the rollout service (SERVING or NOT_SERVING)
        self.advertise = advertise
        self.status: PodStatus | None = None
        self.paused = False
        self._fetched_dir: Path | None = None  # the job's directory of fetched copies, once there is one
        self._digests: dict[tuple[int, int], str] = {}

    async def open(self, status: PodStatus) -> None:
        """Start the record for a job."""
        if self.advertise:
            status = PeerRecord(**status.model_dump(), advertise_address=self.advertise)
        self.status, self.paused = status, False
        self._fetched_dir, self._digests = None, {}
        await put_pod(self.redis, status)

    def holds(self, local: LocalVersion) -> None:
        """Note a version fetched into --weights-dir: its job directory's copies are advertised from now on."""
        if self.advertise and local.fetched:
            self._fetched_dir = local.path.parent
            self._refresh_held()

    def _refresh_held(self) -> None:
        if isinstance(self.status, PeerRecord) and self._fetched_dir is not None:
            self.status.fetched_versions = held_versions(self._fetched_dir, self._digests)

    @property
    def unhealthy(self) -> bool:
        """Whether the pod has marked itself unhealthy."""
        return self.status is not None and self.status.state == "unhealthy"

    async def set_state(self, state: str, last_error: str | None = None) -> None:
        """Write a new state (and last error); a Redis hiccup is not worth failing for."""
        if self.status is None:
            return
        self.status.state = state
        if last_error is not None:
            self.status.last_error = last_error
        try:
            await put_pod(self.redis, self.status)
        except OSError:
            pass

    def set_paused(self, paused: bool) -> None:
        """Follow the job's pause state (written with the next record)."""
        if paused != self.paused:
            log.info("paused" if paused else "resumed")
        self.paused = paused
        self.metrics.paused.set(int(paused))
        if self.status and self.status.state in ("serving", "paused"):
            self.status.state = "paused" if paused else "serving"

    async def served_now(self, local: LocalVersion) -> None:
        """Record a newly served version."""
        self.metrics.served_version.set(local.version)
        self.status.served_version = local.version
        self.status.weights_sha256 = local.sha256
        self.status.state = "paused" if self.paused else "serving"
        self.holds(local)
        await self.set_health(True)
        await put_pod(self.redis, self.status)

    async def serving_nothing(self, message: str) -> None:
        """The engine serves no verified version: unhealthy, no served version, gRPC health NOT_SERVING."""
        self.metrics.served_version.set(-1)
        self.status.served_version, self.status.weights_sha256 = -1, ""
        await self.set_health(False)
        await self.set_state("unhealthy", last_error=message)

    async def set_health(self, serving: bool) -> None:
        """Report the rollout service's gRPC health."""
        if self.health is not None:
            await self.health(serving)

    def reload_failed(self, message: str) -> None:
        """Count a refused reload and keep its reason for the record."""
        self.status.reload_failures += 1
        self.status.last_error = message

    def published(self, groups: int) -> None:
        """Count groups this pod published."""
        if self.status:
            self.status.groups_published += groups

    async def heartbeat(self, every_s: float) -> None:
        """Rewrite the record every `every_s` (a background task while a job is served)."""
        while True:
            await asyncio.sleep(every_s)
            self.status.tokens_per_s = self.rate.per_s()
            try:
                self._refresh_held()  # copies pruned, or fetched since the last reload
                await put_pod(self.redis, self.status)
            except OSError as exc:
                log.warning("heartbeat failed", extra={"cause": str(exc)})
