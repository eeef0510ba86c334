"""The reward service's Prometheus metrics, in a registry of their own (one per service instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds: from cheap in-process checks (~10 µs) to items killed at a multi-second deadline.
_ITEM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_REQUEST_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class RewardMetrics:
    """Counters, histograms and gauges named asympo_reward_*; `registry` is what the exporter serves."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.items = Counter(
            "asympo_reward_items", "Items scored, by verifier and status", ["verifier", "status"], registry=r
        )
        self.item_seconds = Histogram(
            "asympo_reward_item_seconds",
            "Time to score one item, waiting for a worker included",
            ["verifier"],
            buckets=_ITEM_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "asympo_reward_request_seconds",
            "Time to answer one Score request",
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "asympo_reward_requests", "Score requests, by gRPC status code", ["code"], registry=r
        )
        self.timeouts = Counter(
            "asympo_reward_timeouts",
            "Items that missed their deadline (worker killed)",
            ["verifier"],
            registry=r,
        )
        self.pool_restarts = Counter(
            "asympo_reward_pool_restarts",
            "Worker processes replaced, by reason (timeout, crash)",
            ["reason"],
            registry=r,
        )
        self.inflight_items = Gauge(
            "asympo_reward_inflight_items", "Items being scored or waiting", registry=r
        )
        self.inflight_requests = Gauge(
            "asympo_reward_inflight_requests", "Score requests in progress", registry=r
        )
        self.pool_workers = Gauge("asympo_reward_pool_workers", "Worker processes alive", registry=r)
        self.pool_busy = Gauge(
            "asympo_reward_pool_busy_workers", "Worker processes scoring an item", registry=r
        )
        for reason in ("timeout", "crash"):
            self.pool_restarts.labels(reason)  # exported as 0 from the start, so rate() has a baseline
