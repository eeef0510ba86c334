"""The engine of a rollout pod and the verified version it serves, behind the one lock every caller takes.

`version` is the version the engine was last verified to serve, or None: before the first start, and
once the engine is *broken*, i.e. a reload failed and putting the previous weights back failed too, so
nobody knows what it holds. Every path that generates takes the lock and asks `serving()` first, so
nothing is published under a version the engine does not serve; only `restart` (a new engine on a
version it then verifies) leaves the broken state.
"""

from __future__ import annotations

import asyncio
import logging
import time

from asympo.proto.v1 import bus_pb2
from asympo.runtime.grpc_auth import client_auth

from .engines import Engine, make_engine
from .policy import LocalVersion, ReloadRefused, materialize
from .settings import RolloutSettings
from .verify import check_served

log = logging.getLogger(__name__)


class NotServing(RuntimeError):
    """The engine serves no verified version right now: nothing may be generated with it."""


class EngineBroken(RuntimeError):
    """A reload failed and so did the restore of the previous version; `reason` labels the reload failure."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def failure(exc: BaseException) -> str:
    """An exception as a short cause for logs and the pod record."""
    return str(exc) if isinstance(exc, ReloadRefused) else f"{type(exc).__name__}: {exc}"


class ServedModel:
    """The engine and the version it serves; `lock` guards both (the engine is not thread-safe)."""

    def __init__(self, settings: RolloutSettings):
        self.settings = settings
        self.engine: Engine | None = None
        self.version: LocalVersion | None = None
        self.broken: str | None = None  # why the engine is in an unknown state
        # The batch loop, evaluation and gRPC Generate all go through this lock.
        self.lock = asyncio.Lock()

    def serving(self) -> LocalVersion:
        """The verified version being served (call with the lock held); NotServing if there is none."""
        if self.broken is not None:
            raise NotServing(f"the engine serves no verified version: {self.broken}")
        if self.engine is None or self.version is None:
            raise NotServing("no model loaded: the pod serves no job yet")
        return self.version

    def behind(self, version: int) -> bool:
        """Whether `version` is newer than the one served (a broken engine is behind everything)."""
        return self.version is None or version > self.version.version

    async def start(self, pv: bus_pb2.PolicyVersion, peers: list[str] | None = None) -> LocalVersion:
        """Fetch a version (from `peers` holding it, else the learner), start the engine on it, verify it."""
        local = await self._materialize(pv, peers)
        async with self.lock:
            await self._launch(local)
        return local

    async def restart(self, pv: bus_pb2.PolicyVersion, peers: list[str] | None = None) -> LocalVersion:
        """Replace a broken engine with a new one started on `pv` and verified; it stays broken on failure."""
        local = await self._materialize(pv, peers)
        async with self.lock:
            await self._close()
            await self._launch(local)
        log.info("engine restarted on a verified version", extra={"version": local.version})
        return local

    async def _materialize(self, pv: bus_pb2.PolicyVersion, peers: list[str] | None) -> LocalVersion:
        s = self.settings
        return await asyncio.to_thread(
            materialize, pv, s.weights_dir, s.learner_target, client_auth(s), peers=peers, pod=s.pod
        )

    async def _launch(self, local: LocalVersion) -> None:
        s = self.settings
        vllm_options = {"max_model_len": s.max_model_len, "gpu_memory_utilization": s.gpu_memory_utilization,
                        "kv_cache_gib": s.kv_cache_gib}  # fmt: skip
        try:
            self.engine = await asyncio.to_thread(
                make_engine, s.engine, local.path, device=s.device, dtype=s.dtype,
                **(vllm_options if s.engine != "hf" else {}),
            )  # fmt: skip
            await self.check(local, None)
        except BaseException:
            await self._close()  # an engine that failed its checks serves nothing
            raise
        self.version, self.broken = local, None

    async def check(self, local: LocalVersion, previous: LocalVersion | None) -> None:
        """Refuse weights the engine does not really serve: head columns and probes (lock held)."""
        measured = await asyncio.to_thread(
            check_served, self.engine, local, previous, self.settings.probe_tolerance
        )
        log.info("served weights verified", extra={"version": local.version, **measured})

    async def swap(self, local: LocalVersion, timings: dict[str, float] | None = None) -> None:
        """Load and verify `local` in place of the served version; on failure the previous one is put back.

        EngineBroken if the previous one cannot be put back either: the engine is then `broken`.
        `timings` gets the seconds of its phases: load, check (head and probes), reset (prefix cache).
        """
        timings = {} if timings is None else timings
        async with self.lock:
            previous = self.serving()
            try:
                t0 = time.perf_counter()
                await asyncio.to_thread(self.engine.load_weights, local.path)
                t1 = time.perf_counter()
                await self.check(local, previous)
                timings.update(load=t1 - t0, check=time.perf_counter() - t1)
            except Exception as exc:
                # Serving a half-loaded or stale model is worse than serving the verified previous one.
                await self._restore(previous, local, exc)
                raise
            t2 = time.perf_counter()
            await asyncio.to_thread(self.engine.reset_prefix_cache)
            timings["reset"] = time.perf_counter() - t2
            self.version = local

    async def _restore(self, previous: LocalVersion, local: LocalVersion, cause: Exception) -> None:
        try:
            await asyncio.to_thread(self.engine.load_weights, previous.path)
            # The refused weights' probes may have filled the prefix cache.
            await asyncio.to_thread(self.engine.reset_prefix_cache)
            await self.check(previous, None)
        except Exception as exc:
            self.version = None
            self.broken = (
                f"reload of v{local.version} failed ({failure(cause)}); restore of v{previous.version} "
                f"failed ({failure(exc)})"
            )
            reason = cause.reason if isinstance(cause, ReloadRefused) else "engine"
            raise EngineBroken(reason, self.broken) from exc

    async def _close(self) -> None:
        engine, self.engine, self.version = self.engine, None, None
        if engine is not None:
            await asyncio.to_thread(engine.close)

    async def release(self) -> None:
        """Close the engine (between jobs)."""
        async with self.lock:
            await self._close()
            self.version, self.broken = None, None
