"""The engine of a rollout pod and the verified version it serves, behind the one lock every caller takes."""

from __future__ import annotations

import asyncio
import logging

from asympo.proto.v1 import bus_pb2

from .engines import Engine, make_engine
from .policy import LocalVersion, materialize
from .settings import RolloutSettings
from .verify import check_served

log = logging.getLogger(__name__)


class ServedModel:
    """The engine and the version it serves; `lock` guards both (the engine is not thread-safe)."""

    def __init__(self, settings: RolloutSettings):
        self.settings = settings
        self.engine: Engine | None = None
        self.version: LocalVersion | None = None
        # The batch loop, evaluation and gRPC Generate all go through this lock.
        self.lock = asyncio.Lock()

    async def start(self, pv: bus_pb2.PolicyVersion) -> LocalVersion:
        """Fetch a version, start the engine on it and verify what it serves."""
        s = self.settings
        local = await asyncio.to_thread(materialize, pv, s.weights_dir, s.learner_target)
        vllm_options = {"max_model_len": s.max_model_len, "gpu_memory_utilization": s.gpu_memory_utilization,
                        "kv_cache_gib": s.kv_cache_gib}  # fmt: skip
        async with self.lock:
            self.engine = await asyncio.to_thread(
                make_engine, s.engine, local.path, device=s.device, dtype=s.dtype,
                **(vllm_options if s.engine != "hf" else {}),
            )  # fmt: skip
            await self.check(local, None)
            self.version = local
        return local

    async def check(self, local: LocalVersion, previous: LocalVersion | None) -> None:
        """Refuse weights the engine does not really serve: head columns and probes (lock held)."""
        measured = await asyncio.to_thread(
            check_served, self.engine, local, previous, self.settings.probe_tolerance
        )
        log.info("served weights verified", extra={"version": local.version, **measured})

    async def swap(self, local: LocalVersion) -> None:
        """Load and verify `local` in place of the served version; on any failure the previous one is back."""
        previous = self.version
        async with self.lock:
            try:
                await asyncio.to_thread(self.engine.load_weights, local.path)
                await self.check(local, previous)
            except Exception:
                # Put the verified previous weights back: serving a half-loaded or stale model is worse.
                await asyncio.to_thread(self.engine.load_weights, previous.path)
                raise
            await asyncio.to_thread(self.engine.reset_prefix_cache)
            self.version = local

    async def release(self) -> None:
        """Close the engine (between jobs)."""
        async with self.lock:
            if self.engine is not None:
                await asyncio.to_thread(self.engine.close)
            self.engine, self.version = None, None
