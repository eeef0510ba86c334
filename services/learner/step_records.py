"""What a job leaves behind per step: step and evaluation records, and the evaluations that feed them."""

from __future__ import annotations

import asyncio
import logging
import math
import time

from asympo.jobs.values import json_safe

from . import failpoints
from .evaluation import LearnerEvaluation, RolloutEvaluation
from .job_context import JobContext

log = logging.getLogger(__name__)


# What the pods spent on a step's groups, from each group's Timings (means over the step's groups): how
# long its task waited in the stream, the engine call and the scoring of its batch, and the reload and
# previous publish the pod did between batches (attributed to the next batch).
POD_PHASES = ("queued", "generate", "score", "reload", "publish")


def pod_phase_sums(groups) -> tuple[int, list[float]]:
    """This rank's groups: their count and the sum of each of POD_PHASES (non-finite or negative as 0)."""
    sums = [0.0] * len(POD_PHASES)
    for g in groups:
        t = g.timings
        for i, value in enumerate((t.queued_s, t.generate_s, t.score_s, t.reload_s, t.publish_s)):
            sums[i] += value if math.isfinite(value) and value > 0 else 0.0
    return len(groups), sums


def pod_phases(per_rank: list[tuple[int, list[float]]]) -> dict[str, float]:
    """Means over every rank's groups of POD_PHASES."""
    n = sum(count for count, _ in per_rank)
    return {p: sum(sums[i] for _, sums in per_rank) / max(1, n) for i, p in enumerate(POD_PHASES)}


def _set_update_gauges(m, stats: dict) -> None:
    """The update gauges when the step computed them, and Δ and R of each staleness bucket the step had."""
    for gauge, key in ((m.neg_share, "neg_share"), (m.grad_norm_neg, "grad_norm_neg"),
                       (m.grad_norm_pos, "grad_norm_pos")):  # fmt: skip
        if math.isfinite(stats.get(key, math.nan)):
            gauge.set(stats[key])
    # Buckets of earlier steps go: a gauge left at an old bucket's value would read as current.
    m.delta_by_staleness.clear()
    m.balance_ratio_by_staleness.clear()
    for staleness, bucket in (stats.get("by_staleness") or {}).items():
        for gauge, key in ((m.delta_by_staleness, "delta"), (m.balance_ratio_by_staleness, "R")):
            if math.isfinite(bucket.get(key, math.nan)):
                gauge.labels(staleness).set(bucket[key])


class StepRecords:
    """The job's steps stream and metrics: a record per step and per evaluation (rank 0 writes them)."""

    def __init__(self, ctx: JobContext, evaluation: RolloutEvaluation | LearnerEvaluation | None):
        self.ctx = ctx
        self.evaluation = evaluation
        # Staleness of every group trained since this process started (the learner's Status RPC).
        self.staleness_counts: dict[int, int] = {}

    def step_record(
        self, step: int, stats: dict, trained: list, seconds: float, publish_s: float | None, timeline: dict
    ) -> dict:
        """Step `step`'s record (rank 0), and its metrics; `seconds` is the step's critical path."""
        prompt_ids = [pid for ids, *_ in trained for pid in ids]
        staleness = [s for _, st, *_ in trained for s in st]
        generated = sum(rank[2] for rank in trained)
        pods = pod_phases([rank[4] for rank in trained])
        for s in staleness:
            self.staleness_counts[s] = self.staleness_counts.get(s, 0) + 1
            self.ctx.metrics.staleness.observe(s)
        m = self.ctx.metrics
        m.step.set(step)
        m.step_seconds.observe(seconds)
        m.tokens_trained.inc(stats["tokens"])
        m.tokens_per_s.set(stats["tokens"] / max(seconds, 1e-9))
        m.groups_trained.inc(len(prompt_ids))
        if publish_s is not None:
            m.publish_seconds.observe(publish_s)
        for phase, seconds_ in timeline.items():
            m.phase_seconds.labels(phase).observe(seconds_)
        for gauge, key in ((m.loss, "loss"), (m.delta, "delta"), (m.balance_ratio, "R"), (m.reward_mean, "reward_mean"),
                           (m.reward_std, "reward_std"), (m.accuracy, "accuracy"), (m.grad_norm, "grad_norm")):  # fmt: skip
            if math.isfinite(stats.get(key, math.nan)):
                gauge.set(stats[key])
        _set_update_gauges(m, stats)
        return {
            "step": step, "version": self.ctx.progress.version,
            "time": time.time(), "seconds": seconds, "publish_seconds": publish_s, "prompt_ids": prompt_ids,
            "timeline": {"learner": dict(timeline), "pods": pods},
            "staleness": staleness, "tokens_per_s": stats["tokens"] / max(seconds, 1e-9),
            "dropped": dict(self.ctx.progress.dropped), "generated_tokens": generated,
            "max_staleness": self.ctx.max_staleness, **stats,
        }  # fmt: skip

    async def commit(self, entry_ids: list[str], record: dict, step: int) -> None:
        """Evaluate on eval steps, then ACK the step's groups and write its record in one atomic write."""
        ctx = self.ctx
        if ctx.spec.eval.every and step % ctx.spec.eval.every == 0:
            record["heldout_accuracy"] = await self.evaluate(ctx.progress.version, step)
        acked = await ctx.ledger.commit_step(entry_ids, json_safe(record))
        if acked != len(entry_ids):
            log.warning("a step's groups were not all pending at commit",
                        extra={"step": step, "groups": len(entry_ids), "acked": acked})  # fmt: skip
        failpoints.reach("after_commit", step)

    async def write_record(self, record: dict) -> None:
        """Append a record to the steps stream (non-finite numbers become null: JSON has no NaN)."""
        await self.ctx.ledger.append_record(json_safe(record))

    async def evaluate(self, version: int, step: int) -> float | None:
        """Held-out accuracy of a published version: now (learner), or None and an eval record later (pods)."""
        if isinstance(self.evaluation, LearnerEvaluation):
            accuracy = await self.evaluation.accuracy()
            self.ctx.metrics.heldout_accuracy.set(accuracy)
            self.ctx.metrics.heldout_version.set(version)
            return accuracy
        if self.evaluation is not None:
            await self.evaluation.request(version, step)
        return None

    async def write_eval_records(self, records: list[dict]) -> None:
        """Write the pods' evaluation results as records and metrics."""
        for record in records:
            await self.write_record(record)
            self.ctx.metrics.heldout_accuracy.set(record["heldout_accuracy"])
            self.ctx.metrics.heldout_version.set(record["version"])
            k = record.get("eval_samples")
            if k:
                self.ctx.metrics.heldout_mean_at_k.set(record[f"heldout_mean_at_{k}"])
            log.info(
                "evaluated", extra={k: v for k, v in record.items() if k.startswith(("heldout", "version"))}
            )

    async def collect_evals_forever(self) -> None:
        """Keep writing evaluation results as pods report them (a background task of rank 0)."""
        while True:
            try:
                await self.write_eval_records(await self.evaluation.collect())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("collecting evaluation results failed; retrying")
            await asyncio.sleep(self.ctx.settings.poll_s)
