"""The rollout pod's Prometheus metrics (asympo_rollout_*)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class RolloutMetrics:
    """One registry per pod process."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.tokens = Counter("asympo_rollout_tokens_generated", "completion tokens generated", registry=r)
        self.groups = Counter("asympo_rollout_groups_published", "ScoredGroups published", registry=r)
        self.prompts_dead = Counter(
            "asympo_rollout_prompts_dead_lettered", "prompts dead-lettered", registry=r
        )
        self.queue_wait = Histogram(
            "asympo_rollout_prompt_queue_wait_seconds",
            "dispatch to pick-up, per prompt",
            buckets=_LATENCY,
            registry=r,
        )
        self.generate_seconds = Histogram(
            "asympo_rollout_generate_seconds", "engine time per batch", buckets=_LATENCY, registry=r
        )
        self.reward_seconds = Histogram(
            "asympo_rollout_reward_seconds", "reward scoring time per batch", buckets=_LATENCY, registry=r
        )
        self.reward_failures = Counter(
            "asympo_rollout_reward_failures", "reward calls that failed", registry=r
        )
        self.served_version = Gauge(
            "asympo_rollout_served_version", "policy version being served", registry=r
        )
        self.tokens_per_s = Gauge("asympo_rollout_tokens_per_second", "generation throughput", registry=r)
        self.reload_seconds = Histogram(
            "asympo_rollout_reload_seconds", "fetch + verify + reload + probe", buckets=_LATENCY, registry=r
        )
        self.reload_failures = Counter(
            "asympo_rollout_reload_failures", "reloads refused or failed", ["reason"], registry=r
        )
        for reason in ("unreachable", "verify", "head", "probe", "engine"):
            self.reload_failures.labels(reason)  # exported as 0 from the start, so rate() has a baseline
        self.eval_tasks = Counter(
            "asympo_rollout_eval_tasks", "held-out evaluation tasks answered", registry=r
        )
        self.paused = Gauge("asympo_rollout_paused", "1 while the job is paused", registry=r)
