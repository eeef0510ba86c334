"""Redis's memory as Prometheus series of the gateway, read with INFO on each /metrics scrape.

Redis sits beside the services and exports nothing itself; the gateway already holds a client and is
scraped. A Redis that does not answer leaves these series out of the page (Prometheus then marks them
stale) rather than failing the scrape or repeating values that are no longer true.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import redis.asyncio as aioredis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Well inside Prometheus's default 10 s scrape timeout; the client's own retries (up to ~30 s of
# backoff on a lost connection) would otherwise hold the whole page.
INFO_TIMEOUT_S = 2.0


class RedisMemory(Collector):
    """<prefix>redis_used_memory_bytes, _maxmemory_bytes, _evicted_keys_total from the last INFO."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self._info: dict | None = None

    async def refresh(self, redis: aioredis.Redis) -> None:
        """Read INFO memory and stats; a Redis that fails or is slower than INFO_TIMEOUT_S reports nothing."""
        try:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.info("memory")
                pipe.info("stats")
                memory, stats = await asyncio.wait_for(pipe.execute(), INFO_TIMEOUT_S)
            self._info = {k: memory[k] for k in ("used_memory", "maxmemory")} | {
                "evicted_keys": stats["evicted_keys"]
            }
        except Exception:  # any failure: /healthz reports Redis's state, /metrics must still answer
            self._info = None

    def collect(self) -> Iterator[Metric]:
        """The three families, with a sample each only when the last INFO succeeded."""
        return self._families(self._info)

    def describe(self) -> Iterator[Metric]:
        """The families without samples, so the registry checks their names for collisions."""
        return self._families(None)

    def _families(self, info: dict | None) -> Iterator[Metric]:
        used = GaugeMetricFamily(
            self.prefix + "redis_used_memory_bytes", "bytes Redis has allocated (INFO used_memory)"
        )
        limit = GaugeMetricFamily(
            self.prefix + "redis_maxmemory_bytes", "Redis's maxmemory; 0 means no limit (INFO maxmemory)"
        )
        evicted = CounterMetricFamily(
            self.prefix + "redis_evicted_keys", "keys Redis evicted since it started (INFO evicted_keys)"
        )
        if info is not None:
            used.add_metric([], info["used_memory"])
            limit.add_metric([], info["maxmemory"])
            evicted.add_metric([], info["evicted_keys"])
        yield from (used, limit, evicted)
