"""What a job leaves behind per step: step and evaluation records, and the evaluations that feed them."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time

from asympo.jobs.records import get_job, put_job

from .evaluation import LearnerEvaluation

log = logging.getLogger(__name__)

STEPS_MAXLEN = 100_000


class StepRecords:
    """What a job leaves behind per step (a part of JobRun)."""

    def _step_record(self, stats: dict, trained: list, seconds: float, publish_s: float | None) -> dict:
        """The step's record (rank 0), and its metrics."""
        prompt_ids = [pid for ids, *_ in trained for pid in ids]
        staleness = [s for _, st, *_ in trained for s in st]
        generated = sum(n for _, _, n, _ in trained)
        for s in staleness:
            self.staleness_counts[s] = self.staleness_counts.get(s, 0) + 1
            self.metrics.staleness.observe(s)
        m = self.metrics
        m.step.set(self.progress.step)
        m.step_seconds.observe(seconds)
        m.tokens_trained.inc(stats["tokens"])
        m.tokens_per_s.set(stats["tokens"] / max(seconds, 1e-9))
        m.groups_trained.inc(len(prompt_ids))
        if publish_s is not None:
            m.publish_seconds.observe(publish_s)
        for gauge, key in ((m.loss, "loss"), (m.delta, "delta"), (m.balance_ratio, "R"), (m.reward_mean, "reward_mean"),
                           (m.reward_std, "reward_std"), (m.accuracy, "accuracy"), (m.grad_norm, "grad_norm")):  # fmt: skip
            if math.isfinite(stats.get(key, math.nan)):
                gauge.set(stats[key])
        return {
            "step": self.progress.step, "version": self.progress.version + (publish_s is not None),
            "time": time.time(), "seconds": seconds, "publish_seconds": publish_s, "prompt_ids": prompt_ids,
            "staleness": staleness, "tokens_per_s": stats["tokens"] / max(seconds, 1e-9),
            "dropped": dict(self.progress.dropped), "generated_tokens": generated,
            "max_staleness": self.max_staleness, **stats,
        }  # fmt: skip

    async def _write_step(self, record: dict) -> None:
        if self.spec.eval.every and self.progress.step % self.spec.eval.every == 0:
            record["heldout_accuracy"] = await self._evaluate(self.progress.version, self.progress.step)
        await self._write_record(record)
        job = await get_job(self.redis, self.job.job_id)
        if job is not None and job.state in ("running", "paused"):
            job.step, job.version = self.progress.step, self.progress.version
            await put_job(self.redis, job)

    async def _write_record(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        await self.redis.xadd(
            self.keys.steps, {"json": json.dumps(clean)}, maxlen=STEPS_MAXLEN, approximate=True
        )

    async def _evaluate(self, version: int, step: int) -> float | None:
        """Held-out accuracy of a published version: now (learner), or None and an eval record later (pods)."""
        if isinstance(self.evaluation, LearnerEvaluation):
            accuracy = await self.evaluation.accuracy()
            self.metrics.heldout_accuracy.set(accuracy)
            self.metrics.heldout_version.set(version)
            return accuracy
        if self.evaluation is not None:
            await self.evaluation.request(version, step)
        return None

    async def _write_eval_records(self, records: list[dict]) -> None:
        for record in records:
            await self._write_record(record)
            self.metrics.heldout_accuracy.set(record["heldout_accuracy"])
            self.metrics.heldout_version.set(record["version"])
            k = record.get("eval_samples")
            if k:
                self.metrics.heldout_mean_at_k.set(record[f"heldout_mean_at_{k}"])
            log.info(
                "evaluated", extra={k: v for k, v in record.items() if k.startswith(("heldout", "version"))}
            )

    async def _collect_evals_forever(self) -> None:
        while True:
            try:
                await self._write_eval_records(await self.evaluation.collect())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("collecting evaluation results failed; retrying")
            await asyncio.sleep(self.settings.poll_s)
