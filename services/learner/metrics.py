"""The learner's Prometheus metrics (asympo_learner_*)."""

from __future__ import annotations

from asympo.bus.flow import DROP_REASONS
from asympo.runtime.metric_set import MetricSet

_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class LearnerMetrics:
    """One registry per learner process (rank 0 exports it)."""

    def __init__(self) -> None:
        m = MetricSet("learner")
        self.registry = m.registry
        self.step = m.gauge("step", "optimizer steps applied")
        self.version = m.gauge("version", "newest published policy version")
        self.step_seconds = m.histogram("step_seconds", "wall time per step", _SECONDS)
        self.tokens_trained = m.counter("tokens_trained", "response tokens trained on")
        self.tokens_per_s = m.gauge("tokens_per_second", "trained tokens per second")
        self.groups_trained = m.counter("groups_trained", "groups trained on")
        self.groups_dropped = m.counter("groups_dropped", "groups not trained on", ("reason",))
        for reason in (*DROP_REASONS, "duplicate", "foreign"):
            self.groups_dropped.labels(reason)  # exported as 0 from the start, so rate() has a baseline
        self.groups_invalid = m.counter(
            "groups_invalid",
            "groups dead-lettered by the learner's checks, by the rule they broke",
            ("rule",),
        )
        self.steps_skipped = m.counter(
            "steps_skipped", "optimizer steps skipped for a non-finite loss or gradient (groups dropped)"
        )
        self.staleness = m.histogram("group_staleness", "version_now − gen_version_start of trained groups", (0, 1, 2, 3, 4, 6, 8, 12, 16, 32))  # fmt: skip
        self.loss = m.gauge("loss", "loss of the last step")
        self.delta = m.gauge("delta", "imbalance Δ = (1/N) Σ A S of the last step")
        self.balance_ratio = m.gauge("balance_ratio", "R = Σ|A<0| S / Σ A>0 S")
        self.reward_mean = m.gauge("reward_mean", "mean reward of the last batch")
        self.reward_std = m.gauge("reward_std", "reward std of the last batch")
        self.accuracy = m.gauge("accuracy", "fraction of responses with reward 1")
        self.heldout_accuracy = m.gauge("heldout_accuracy", "held-out greedy accuracy")
        self.heldout_mean_at_k = m.gauge("heldout_mean_at_k", "held-out mean reward of k samples per prompt")
        self.heldout_version = m.gauge("heldout_version", "policy version of the newest held-out evaluation")
        self.grad_norm = m.gauge("grad_norm", "gradient norm before clipping")
        # The update gauges (services/learner/update_gauges.py), set on steps that compute them.
        self.neg_share = m.gauge(
            "neg_share", "<g-, g> / |g|^2: the A<0 responses' share of the last gauged update"
        )
        self.grad_norm_neg = m.gauge(
            "grad_norm_neg", "|g-|: gradient norm of the A<0 responses' part of the loss"
        )
        self.grad_norm_pos = m.gauge(
            "grad_norm_pos", "|g+|: gradient norm of the A>0 responses' part of the loss"
        )
        # Per staleness of the last step's groups; only the buckets that step had are exported.
        self.delta_by_staleness = m.gauge(
            "delta_by_staleness",
            "Δ = (1/n) Σ A S over the last step's responses of one staleness",
            ("staleness",),
        )
        self.balance_ratio_by_staleness = m.gauge(
            "balance_ratio_by_staleness", "R over the last step's responses of one staleness", ("staleness",)
        )
        self.publish_seconds = m.histogram("publish_seconds", "gather + write + announce a version", _SECONDS)
        self.phase_seconds = m.histogram(
            "step_phase_seconds",
            "where a step's time went, by phase (wait_groups, train, snapshot, save, hash, announce, ...)",
            _SECONDS, ("phase",),
        )  # fmt: skip
        self.checkpoint_seconds = m.histogram("checkpoint_seconds", "checkpoint write time", _SECONDS)
        self.in_flight = m.gauge("prompts_in_flight", "dispatched, not yet consumed")
        self.dispatched = m.counter("prompts_dispatched", "PromptTasks dispatched")
        self.prompt_backlog = m.gauge("prompt_backlog", "PromptTasks not yet picked up")
        self.job_active = m.gauge("job_active", "1 while a job is running (not paused), else 0")
        self.job_redis_bytes = m.gauge("job_redis_bytes", "bytes the running job's keys hold in Redis")
        self.job_restarts = m.gauge(
            "job_restarts", "times the current job lost its learner without a clean shutdown"
        )
