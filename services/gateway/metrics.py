"""The gateway's Prometheus metrics (asympo_gateway_*) and the middleware that records them."""

from __future__ import annotations

import time

from fastapi import Request
from prometheus_client import CollectorRegistry, Counter, Histogram


class GatewayMetrics:
    """asympo_gateway_* request metrics."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("asympo_gateway_requests", "requests by route and status", ["route", "status"],
                                registry=r)  # fmt: skip
        self.seconds = Histogram("asympo_gateway_request_seconds", "request latency", ["route"], registry=r)


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
