"""Held-out evaluation of published versions: on the rollout pods, or in the learner's own process.

`RolloutEvaluation` (real models): after a version is published, rank 0 splits the held-out set into
EvalTasks on `asympo:{job}:eval`. A pod takes them before training work, generates one greedy
completion per prompt (and k samples for mean@k / pass@k) with that version, scores them with the
job's verifier through the reward service, and answers with an EvalResult on `asympo:{job}:eval-results`.
The learner collects results in the background and writes one record per evaluated version when all
its chunks are in. Everything lives in Redis, so a restarted learner finishes collecting where it left.

`LearnerEvaluation` (the tiny model): greedy decoding with transformers in the learner's process and
exact match, as the reference loop does; the result goes straight into the step record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from asympo.bus import JobKeys, Ledger, decode
from asympo.bus.codec import EntryError
from asympo.bus.follow import StreamFollower
from asympo.bus.skipped import SkipLog
from asympo.jobs.spec import JobSpec
from asympo.models.prompts import Prompter
from asympo.proto.v1 import bus_pb2
from asympo.tasks import build_task

log = logging.getLogger(__name__)

_EVAL_ID = re.compile(r"^v(-?[0-9]+)-([0-9]+)$")


def _chunk_index(eval_id: str, version: int) -> int | None:
    """The chunk an eval_id names (`v{version}-{chunk}`, as `eval_tasks` writes them) if it is of `version`."""
    match = _EVAL_ID.match(eval_id)
    return int(match[2]) if match and int(match[1]) == version else None


def eval_tasks(
    spec: JobSpec, job_id: str, version: int, step: int, prompter: Prompter
) -> list[bus_pb2.EvalTask]:
    """The EvalTasks of one evaluation: the held-out set in chunks, greedy plus k samples per prompt."""
    problems = build_task(spec.task).heldout()
    size = spec.eval.chunk_prompts
    chunks = [problems[i : i + size] for i in range(0, len(problems), size)]
    max_new = spec.eval.max_new_tokens or spec.sampling.max_new_tokens
    greedy = bus_pb2.SamplingParams(
        max_new_tokens=max_new, temperature=0.0, top_p=1.0, stop_token_ids=prompter.stop_ids
    )
    sampled = bus_pb2.SamplingParams(
        max_new_tokens=max_new, temperature=spec.eval.temperature or spec.sampling.temperature, top_p=spec.sampling.top_p,
        seed=version, stop_token_ids=prompter.stop_ids,
    )  # fmt: skip
    return [
        bus_pb2.EvalTask(
            job_id=job_id,
            eval_id=f"v{version}-{i}",
            version=version,
            step=step,
            greedy=greedy,
            samples=spec.eval.samples,
            sampling=sampled,
            verifier=spec.verifier,
            chunks=len(chunks),
            prompts=[
                bus_pb2.EvalPrompt(
                    prompt_id=p.prompt_id, prompt_token_ids=prompter.ids(p.prompt), reference=p.reference
                )
                for p in chunk
            ],
        )  # fmt: skip
        for i, chunk in enumerate(chunks)
    ]


@dataclass
class Round:
    """The results of one version's evaluation as they arrive."""

    version: int
    step: int
    chunks: int
    samples: int = 0
    results: dict[str, bus_pb2.EvalResult] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Whether every chunk has answered."""
        return len(self.results) >= self.chunks

    def record(self) -> dict:
        """The eval record of a complete round: greedy accuracy, and mean@k / pass@k when sampled."""
        results = list(self.results.values())
        greedy = [r for res in results for r in res.greedy_rewards]
        record = {
            "eval": True, "step": self.step, "version": self.version, "time": time.time(),
            "served_version": min(res.served_version for res in results),
            "heldout_accuracy": sum(greedy) / len(greedy), "heldout_prompts": len(greedy),
            "eval_seconds": max(res.seconds for res in results),
            "eval_generated_tokens": sum(res.generated_tokens for res in results),
            "eval_pods": sorted({res.pod for res in results}),
        }  # fmt: skip
        if self.samples:
            means = [m for res in results for m in res.sample_means]
            best = [b for res in results for b in res.sample_best]
            record.update(
                {
                    f"heldout_mean_at_{self.samples}": sum(means) / len(means),
                    f"heldout_pass_at_{self.samples}": sum(b > 0 for b in best) / len(best),
                    "eval_samples": self.samples,
                }
            )
        return record


class RolloutEvaluation:
    """Requests evaluations from the pods and turns their results into eval records (rank 0)."""

    engine = "rollout"

    def __init__(self, redis: aioredis.Redis, job_id: str, spec: JobSpec, prompter: Prompter, ledger: Ledger):
        self.redis, self.spec, self.prompter, self.ledger = redis, spec, prompter, ledger
        self.keys = JobKeys(job_id)
        self.rounds: dict[int, Round] = {}
        self.done: set[int] = set()
        self.results: dict[int, dict] = {}  # the records of rounds completed by this learner
        heldout, size = len(build_task(spec.task).heldout()), spec.eval.chunk_prompts
        self.chunk_sizes = [min(size, heldout - i) for i in range(0, heldout, size)]
        self.results_stream = StreamFollower(
            redis, self.keys.eval_results, bus_pb2.EvalResult, job_id,
            skips=SkipLog(redis, "learner"), check=self.result_problem,
        )  # fmt: skip

    def result_problem(self, result: bus_pb2.EvalResult) -> str | None:
        """Why a result cannot count towards an evaluation this learner awaits, or None (one of a version
        already recorded, a redelivered chunk's twin, is usable: it changes nothing)."""
        if result.version in self.done:
            return None
        round_ = self.rounds.get(result.version)
        if round_ is None:
            return f"no evaluation of version {result.version} is awaited"
        chunk = _chunk_index(result.eval_id, result.version)
        chunks = min(round_.chunks, len(self.chunk_sizes))
        if chunk is None or chunk >= chunks or result.chunks != round_.chunks:
            return (
                f"eval_id {result.eval_id[:60]!r} is no chunk of the evaluation of version {result.version}"
            )
        n = self.chunk_sizes[chunk]
        k = n if round_.samples else 0
        counts = (len(result.greedy_rewards), len(result.sample_means), len(result.sample_best))
        if counts != (n, k, k):
            return f"{counts} greedy, mean and best rewards for a chunk of {n} prompts and samples {round_.samples}"
        numbers = [*result.greedy_rewards, *result.sample_means, *result.sample_best, result.seconds]
        if not all(math.isfinite(x) for x in numbers):
            return "a reward or the seconds are not finite"
        if result.served_version < 0 or result.seconds < 0 or result.generated_tokens < 0:
            return f"served_version {result.served_version}, seconds or generated_tokens negative"
        return None

    async def resume(self, superseded: set[int] = frozenset()) -> None:
        """After a restart: versions already recorded are done; requested ones are awaited again, except
        `superseded` ones (versions of steps a roll-back undid)."""
        for _, fields in await self.redis.xrange(self.keys.steps):
            record = json.loads(fields[b"json"])
            if record.get("eval"):
                self.done.add(record["version"])
        for _, fields in await self.redis.xrange(self.keys.evals):
            try:
                task = decode(fields, bus_pb2.EvalTask, self.keys.job_id)
            except EntryError:
                continue
            if task.version not in self.done and task.version not in superseded:
                self.rounds.setdefault(
                    task.version, Round(task.version, task.step, task.chunks, task.samples)
                )

    async def request(self, version: int, step: int) -> None:
        """Queue the evaluation of a published version (once per version)."""
        if version in self.done or version in self.rounds:
            return
        tasks = eval_tasks(self.spec, self.keys.job_id, version, step, self.prompter)
        self.rounds[version] = Round(version, step, len(tasks), self.spec.eval.samples)
        await self.ledger.publish(self.keys.evals, tasks)
        log.info("evaluation requested", extra={"version": version, "step": step, "tasks": len(tasks)})

    async def collect(self) -> list[dict]:
        """Records of the rounds completed since the last call."""
        out = []
        for result in await self.results_stream.read():
            round_ = self.rounds.get(result.version)
            if round_ is None:
                continue  # already recorded, or requested by an earlier learner and finished
            round_.results[result.eval_id] = result  # a redelivered chunk replaces its twin
            if round_.complete:
                record = round_.record()
                out.append(record)
                self.results[result.version] = record
                del self.rounds[result.version]
                self.done.add(result.version)
        return out

    async def wait(self, version: int, timeout_s: float, poll_s: float = 0.5) -> list[dict]:
        """Collect until `version` is recorded or the timeout passes; returns every record collected."""
        records, deadline = [], time.monotonic() + timeout_s
        while version not in self.done and time.monotonic() < deadline:
            records += await self.collect()
            if version not in self.done:
                await asyncio.sleep(poll_s)
        return records


class LearnerEvaluation:
    """Greedy held-out accuracy of the learner's plain copy of the published weights, exact match."""

    engine = "learner"

    def __init__(self, spec: JobSpec, model, prompter: Prompter):
        self.spec, self.model, self.prompter = spec, model, prompter
        self.problems = build_task(spec.task).heldout()

    async def accuracy(self) -> float:
        """Greedy accuracy of `model` on the held-out set."""
        from asympo.models.evaluate import greedy_accuracy

        max_new = self.spec.eval.max_new_tokens or self.spec.sampling.max_new_tokens
        return await asyncio.to_thread(greedy_accuracy, self.model, self.prompter, self.problems, max_new)
