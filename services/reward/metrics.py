"""The reward service's Prometheus metrics, in a registry of their own (one per service instance)."""

from __future__ import annotations

from asympo.runtime.metric_set import MetricSet

# Seconds: from cheap checks (a pool round trip, well under a millisecond) to items killed at a deadline.
_ITEM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_REQUEST_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class RewardMetrics:
    """Counters, histograms and gauges named asympo_reward_*; `registry` is what the exporter serves."""

    def __init__(self) -> None:
        m = MetricSet("reward")
        self.registry = m.registry
        self.items = m.counter("items", "Items scored, by verifier and status", ("verifier", "status"))
        self.item_seconds = m.histogram(
            "item_seconds",
            "Time to score one item, waiting for a worker included",
            _ITEM_BUCKETS,
            ("verifier",),
        )
        self.request_seconds = m.histogram(
            "request_seconds", "Time to answer one Score request", _REQUEST_BUCKETS
        )
        self.requests = m.counter("requests", "Score requests, by gRPC status code", ("code",))
        self.timeouts = m.counter(
            "timeouts", "Items that missed their deadline (worker killed)", ("verifier",)
        )
        self.pool_restarts = m.counter(
            "pool_restarts", "Worker processes replaced, by reason (timeout, crash)", ("reason",)
        )
        self.inflight_items = m.gauge("inflight_items", "Items being scored or waiting")
        self.inflight_requests = m.gauge("inflight_requests", "Score requests in progress")
        self.pool_workers = m.gauge("pool_workers", "Worker processes alive")
        self.pool_busy = m.gauge("pool_busy_workers", "Worker processes scoring an item")
        for reason in ("timeout", "crash"):
            self.pool_restarts.labels(reason)  # exported as 0 from the start, so rate() has a baseline
