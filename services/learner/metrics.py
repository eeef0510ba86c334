"""The learner's Prometheus metrics (asympo_learner_*)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class LearnerMetrics:
    """One registry per learner process (rank 0 exports it)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.step = Gauge("asympo_learner_step", "optimizer steps applied", registry=r)
        self.version = Gauge("asympo_learner_version", "newest published policy version", registry=r)
        self.step_seconds = Histogram(
            "asympo_learner_step_seconds", "wall time per step", buckets=_SECONDS, registry=r
        )
        self.tokens_trained = Counter(
            "asympo_learner_tokens_trained", "response tokens trained on", registry=r
        )
        self.tokens_per_s = Gauge("asympo_learner_tokens_per_second", "trained tokens per second", registry=r)
        self.groups_trained = Counter("asympo_learner_groups_trained", "groups trained on", registry=r)
        self.groups_dropped = Counter(
            "asympo_learner_groups_dropped", "groups not trained on", ["reason"], registry=r
        )
        for reason in ("stale", "duplicate", "zero_variance"):
            self.groups_dropped.labels(reason)  # exported as 0 from the start, so rate() has a baseline
        self.staleness = Histogram(
            "asympo_learner_group_staleness", "version_now − gen_version_start of trained groups",
            buckets=(0, 1, 2, 3, 4, 6, 8, 12, 16, 32), registry=r,
        )  # fmt: skip
        self.loss = Gauge("asympo_learner_loss", "loss of the last step", registry=r)
        self.delta = Gauge("asympo_learner_delta", "imbalance Δ = (1/N) Σ A S of the last step", registry=r)
        self.balance_ratio = Gauge("asympo_learner_balance_ratio", "R = Σ|A<0| S / Σ A>0 S", registry=r)
        self.reward_mean = Gauge("asympo_learner_reward_mean", "mean reward of the last batch", registry=r)
        self.reward_std = Gauge("asympo_learner_reward_std", "reward std of the last batch", registry=r)
        self.accuracy = Gauge("asympo_learner_accuracy", "fraction of responses with reward 1", registry=r)
        self.heldout_accuracy = Gauge(
            "asympo_learner_heldout_accuracy", "held-out greedy accuracy", registry=r
        )
        self.heldout_mean_at_k = Gauge(
            "asympo_learner_heldout_mean_at_k", "held-out mean reward of k samples per prompt", registry=r
        )
        self.heldout_version = Gauge(
            "asympo_learner_heldout_version", "policy version of the newest held-out evaluation", registry=r
        )
        self.grad_norm = Gauge("asympo_learner_grad_norm", "gradient norm before clipping", registry=r)
        self.publish_seconds = Histogram(
            "asympo_learner_publish_seconds",
            "gather + write + announce a version",
            buckets=_SECONDS,
            registry=r,
        )
        self.checkpoint_seconds = Histogram(
            "asympo_learner_checkpoint_seconds", "checkpoint write time", buckets=_SECONDS, registry=r
        )
        self.in_flight = Gauge("asympo_learner_prompts_in_flight", "dispatched, not yet consumed", registry=r)
        self.dispatched = Counter("asympo_learner_prompts_dispatched", "PromptTasks dispatched", registry=r)
        self.prompt_backlog = Gauge(
            "asympo_learner_prompt_backlog", "PromptTasks not yet picked up", registry=r
        )
        self.job_active = Gauge(
            "asympo_learner_job_active", "1 while a job is running (not paused), else 0", registry=r
        )
