"""Following the learner's versions on a pod: load the newest, verify what the engine serves, refuse what fails."""

from __future__ import annotations

import asyncio
import logging
import time

from asympo.bus import JobKeys, newest_version
from asympo.jobs.records import put_pod
from asympo.proto.v1 import bus_pb2

from .policy import LocalVersion, ReloadRefused, materialize, prune_fetched
from .verify import check_served

log = logging.getLogger(__name__)


class PolicyReloading:
    """Following the learner's versions on a pod (a part of RolloutPod)."""

    async def _check_served(self, local: LocalVersion, previous: LocalVersion | None) -> None:
        """Refuse weights the engine does not really serve: head columns and probes (engine lock held)."""
        measured = await asyncio.to_thread(
            check_served, self.engine, local, previous, self.settings.probe_tolerance
        )
        log.info("served weights verified", extra={"version": local.version, **measured})

    async def _served_now(self, local: LocalVersion) -> None:
        self.metrics.served_version.set(local.version)
        self.status.served_version = local.version
        self.status.weights_sha256 = local.sha256
        self.status.state = "paused" if self.paused else "serving"
        await put_pod(self.redis, self.status)

    async def reload_newest(self, keys: JobKeys) -> None:
        """Load the newest announced version if it is newer than the one served (refused ones back off)."""
        pv = await newest_version(self.redis, keys)
        if (
            pv is None
            or self.served is None
            or pv.version <= self.served.version
            or not self._retry.ready(pv)
        ):
            return
        t0 = time.perf_counter()
        await self._set_state("reloading")
        previous = self.served
        try:
            local = await asyncio.to_thread(
                materialize, pv, self.settings.weights_dir, self.settings.learner_target
            )
            async with self.engine_lock:
                try:
                    await asyncio.to_thread(self.engine.load_weights, local.path)
                    await self._check_served(local, previous)
                except Exception:
                    # Put the verified previous weights back: serving a half-loaded or stale model is worse.
                    await asyncio.to_thread(self.engine.load_weights, previous.path)
                    raise
                await asyncio.to_thread(self.engine.reset_prefix_cache)
                self.served = local
        except ReloadRefused as exc:
            self._reload_failed(pv, exc.reason, str(exc))
        except Exception as exc:
            self._reload_failed(pv, "engine", f"{type(exc).__name__}: {exc}")
        else:
            self.metrics.reload_seconds.observe(time.perf_counter() - t0)
            await self._served_now(local)
            prune_fetched(self.settings.weights_dir, keys.job_id, {local.path, previous.path})
            log.info(
                "policy reloaded",
                extra={"version": local.version, "seconds": round(time.perf_counter() - t0, 3)},
            )
            return
        await self._set_state("serving")

    def _reload_failed(self, pv: bus_pb2.PolicyVersion, reason: str, message: str) -> None:
        self._retry.failed(pv)
        self.metrics.reload_failures.labels(reason).inc()
        self.status.reload_failures += 1
        self.status.last_error = message
        log.error(
            "reload refused; still serving the previous version",
            extra={"version": pv.version, "cause": message},
        )
