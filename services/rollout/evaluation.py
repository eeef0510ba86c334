"""Held-out evaluation on a rollout pod: an EvalTask in, an EvalResult out.

The learner splits the held-out set of a published version into EvalTasks (`asympo:{job}:eval`); a pod
takes one before any training work, generates a greedy completion (and `samples` sampled ones) per
prompt with the version it serves, scores them with the job's verifier through the reward service,
and writes the rewards to `asympo:{job}:eval-results`, ACKing the task in the same transaction.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from asympo.bus import Delivery, JobKeys, StreamConsumer, encode
from asympo.proto.v1 import bus_pb2

from .engines import GenRequest, GenSample
from .entry_checks import ModelLimits, eval_task_problem

if TYPE_CHECKING:
    from .pod import RolloutPod


def eval_requests(task: bus_pb2.EvalTask) -> list[GenRequest]:
    """One greedy request per prompt, then (with samples) one request for k samples per prompt."""

    def request(
        prompt: bus_pb2.EvalPrompt, n: int, sp: bus_pb2.SamplingParams, seed: int | None
    ) -> GenRequest:
        return GenRequest.from_sampling(prompt.prompt_token_ids, n, sp, seed=seed)

    out = [request(p, 1, task.greedy, None) for p in task.prompts]
    if task.samples:
        out += [
            request(p, task.samples, task.sampling, task.sampling.seed + i)
            for i, p in enumerate(task.prompts)
        ]
    return out


async def evaluate(pod: RolloutPod, consumer: StreamConsumer, keys: JobKeys, delivery: Delivery) -> None:
    """Run one EvalTask with the served version and publish its EvalResult (the task stays pending on failure;
    one the engine must not be given is dead-lettered with the reason)."""
    task: bus_pb2.EvalTask = delivery.message
    served = pod.model.version
    limits = ModelLimits.of(served.path if served else None, pod.settings.max_model_len)
    problem = eval_task_problem(task, limits, pod.job)
    if problem:
        await consumer.dead_letter(delivery.entry_id, encode(task), problem)
        return
    t0 = time.perf_counter()
    async with consumer.holding([delivery.entry_id]):
        if pod.model.behind(task.version):
            # The version to evaluate was published after this pod's last look.
            await pod.reloader.reload_newest(keys)
        requests = eval_requests(task)
        async with pod.model.lock:
            served = pod.model.serving().version  # NotServing leaves the task pending
            outputs = await asyncio.to_thread(pod.model.engine.generate, requests)
        n = len(task.prompts)
        greedy = [group[0] for group in outputs[:n]]
        verifier = task.verifier or pod.job.spec.verifier
        refs = [p.reference for p in task.prompts]
        greedy_scores = await pod.reward.score(
            verifier, [s.text for s in greedy], refs, pod.settings.reward_deadline_s
        )
        means, best = await _score_samples(pod, verifier, outputs[n:], refs) if task.samples else ([], [])
        result = bus_pb2.EvalResult(
            job_id=task.job_id, eval_id=task.eval_id, version=task.version, served_version=served, step=task.step,
            greedy_rewards=[r.reward for r in greedy_scores], sample_means=means, sample_best=best,
            chunks=task.chunks, pod=pod.settings.pod, seconds=time.perf_counter() - t0,
            generated_tokens=sum(len(s.token_ids) for group in outputs for s in group),
        )  # fmt: skip
        await consumer.ack_and_publish([delivery.entry_id], keys.eval_results, [result])
    pod.metrics.eval_tasks.inc()


async def _score_samples(
    pod: RolloutPod, verifier: str, groups: list[list[GenSample]], refs: list[str]
) -> tuple[list[float], list[float]]:
    texts = [s.text for g in groups for s in g]
    flat_refs = [ref for g, ref in zip(groups, refs) for _ in g]
    scores = await pod.reward.score(verifier, texts, flat_refs, pod.settings.reward_deadline_s)
    means, best, i = [], [], 0
    for g in groups:
        rewards = [r.reward for r in scores[i : i + len(g)]]
        i += len(g)
        means.append(sum(rewards) / len(rewards))
        best.append(max(rewards))
    return means, best
