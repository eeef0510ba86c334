"""The rollout pod's Prometheus metrics (asympo_rollout_*)."""

from __future__ import annotations

from asympo.runtime.metric_set import MetricSet

_LATENCY = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class RolloutMetrics:
    """One registry per pod process."""

    def __init__(self) -> None:
        m = MetricSet("rollout")
        self.registry = m.registry
        self.tokens = m.counter("tokens_generated", "completion tokens generated")
        self.groups = m.counter("groups_published", "ScoredGroups published")
        self.prompts_dead = m.counter("prompts_dead_lettered", "prompts dead-lettered")
        self.queue_wait = m.histogram(
            "prompt_queue_wait_seconds", "dispatch to pick-up, per prompt", _LATENCY
        )
        self.generate_seconds = m.histogram("generate_seconds", "engine time per batch", _LATENCY)
        self.reward_seconds = m.histogram("reward_seconds", "reward scoring time per batch", _LATENCY)
        self.reward_failures = m.counter("reward_failures", "reward calls that failed")
        self.served_version = m.gauge("served_version", "policy version being served")
        self.tokens_per_s = m.gauge("tokens_per_second", "generation throughput")
        self.reload_seconds = m.histogram("reload_seconds", "fetch + verify + reload + probe", _LATENCY)
        self.reload_phase_seconds = m.histogram(
            "reload_phase_seconds", "a successful reload by phase: fetch, verify, load, check, reset",
            _LATENCY, ("phase",),
        )  # fmt: skip
        self.publish_seconds = m.histogram(
            "publish_seconds", "writing a batch's ScoredGroups and ACKing its tasks", _LATENCY
        )
        self.reload_failures = m.counter("reload_failures", "reloads refused or failed", ("reason",))
        for reason in ("unreachable", "verify", "head", "probe", "engine"):
            self.reload_failures.labels(reason)  # exported as 0 from the start, so rate() has a baseline
        self.eval_tasks = m.counter("eval_tasks", "held-out evaluation tasks answered")
        self.paused = m.gauge("paused", "1 while the job is paused")
