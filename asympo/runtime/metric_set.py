"""A service's Prometheus metrics in their own registry, all named asympo_<service>_<name>."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class MetricSet:
    """Creates metrics in one registry with the service's name prefix (one registry per process or test)."""

    def __init__(self, service: str):
        self.prefix = f"asympo_{service}_"
        self.registry = CollectorRegistry()

    def gauge(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Gauge:
        """A gauge named asympo_<service>_<name>."""
        return Gauge(self.prefix + name, documentation, labels, registry=self.registry)

    def counter(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
        """A counter named asympo_<service>_<name> (exported with a _total suffix)."""
        return Counter(self.prefix + name, documentation, labels, registry=self.registry)

    def histogram(self, name: str, documentation: str, buckets, labels: tuple[str, ...] = ()) -> Histogram:
        """A histogram named asympo_<service>_<name>."""
        return Histogram(self.prefix + name, documentation, labels, buckets=buckets, registry=self.registry)
