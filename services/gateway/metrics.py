"""The gateway's Prometheus metrics (asympo_gateway_*) and the middleware that records them."""

from __future__ import annotations

import time

from fastapi import Request
from prometheus_client import Histogram

from asympo.runtime.metric_set import MetricSet

from .redis_memory import RedisMemory


class GatewayMetrics:
    """asympo_gateway_* metrics: requests, and Redis's memory (refreshed by each scrape)."""

    def __init__(self) -> None:
        m = MetricSet("gateway")
        self.registry = m.registry
        self.requests = m.counter("requests", "requests by route and status", ("route", "status"))
        self.seconds = m.histogram(
            "request_seconds", "request latency", Histogram.DEFAULT_BUCKETS, ("route",)
        )
        self.redis_memory = RedisMemory(m.prefix)
        self.registry.register(self.redis_memory)


async def count_requests(request: Request, call_next):
    """HTTP middleware: count and time every request in the app's GatewayMetrics."""
    t0 = time.perf_counter()
    response = await call_next(request)
    # The route's template, not the URL: one label per route however many job ids clients send.
    route = request.scope.get("route")
    name = getattr(route, "path", "unmatched")
    metrics: GatewayMetrics = request.app.state.metrics
    metrics.requests.labels(name, str(response.status_code)).inc()
    metrics.seconds.labels(name).observe(time.perf_counter() - t0)
    return response
