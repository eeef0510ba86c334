"""One batch on a rollout pod: generate each task's group, score it through the reward service, publish the scored groups and ACK the tasks together."""

from __future__ import annotations

import asyncio
import logging
import time

from asympo.bus import (
    Delivery,
    JobKeys,
    StreamConsumer,
    encode,
)
from asympo.bus.scored import scored_group
from asympo.jobs.records import JobRecord
from asympo.proto.v1 import bus_pb2
from services.reward.client import AsyncRewardClient, RewardServiceError

from .engines import EngineError, GenRequest, GenSample
from .entry_checks import MAX_GROUP_SIZE as MAX_GROUP_SIZE
from .entry_checks import ModelLimits, task_problem
from .metrics import RolloutMetrics
from .served import NotServing, ServedModel
from .settings import RolloutSettings
from .status_board import StatusBoard

log = logging.getLogger(__name__)


class BatchProcessor:
    """Turns a batch of PromptTasks into ScoredGroups with the served model and the reward service."""

    def __init__(
        self, settings: RolloutSettings, model: ServedModel, reward: AsyncRewardClient, board: StatusBoard,
        metrics: RolloutMetrics, pause,
    ):  # fmt: skip
        self.settings = settings
        self.model = model
        self.reward = reward
        self.board = board
        self.metrics = metrics
        self.pause = pause  # async (seconds) -> None that a pod shutdown cuts short
        self.job: JobRecord | None = None  # the job being served: its loss and verifier
        self.reloads = None  # the pod's Reloader: reload time paid since the previous batch
        self.publish_s = 0.0  # how long publishing the previous batch took (carried by the next one)

    async def process(self, consumer: StreamConsumer, keys: JobKeys, batch: list[Delivery]) -> None:
        """Dead-letter unusable tasks, then generate, score, publish and ACK the rest (one by one on failure)."""
        usable = []
        for d in batch:
            reason = self._unusable(d.message)
            if reason:
                self.metrics.prompts_dead.inc()
                await consumer.dead_letter(d.entry_id, encode(d.message), reason)
            else:
                usable.append(d)
        if not usable:
            return
        try:
            async with consumer.holding([d.entry_id for d in usable]):
                await self._process_batch(consumer, keys, usable)
        except NotServing as exc:
            # Not the tasks' fault: left un-ACKed, they are taken up again once a verified version is served.
            log.warning("no verified version served; tasks left for later", extra={"cause": str(exc)})
            for d in usable:
                consumer.note_failure(d.entry_id, f"no verified version served ({exc})")
        except (EngineError, ValueError, RuntimeError) as exc:
            if len(usable) == 1:
                # Left un-ACKed: redelivered until max_deliveries, then dead-lettered with the reason.
                log.error(
                    "a prompt failed in the engine", extra={"entry": usable[0].entry_id, "cause": str(exc)}
                )
                consumer.note_failure(usable[0].entry_id, f"{type(exc).__name__}: {exc}")
                return
            # Find the poison: alone, each good task goes through and only the bad one keeps failing.
            log.warning(
                "a batch failed in the engine; retrying its tasks one by one", extra={"cause": str(exc)}
            )
            for d in usable:
                await self.process(consumer, keys, [d])

    def _unusable(self, task: bus_pb2.PromptTask) -> str | None:
        served = self.model.version
        limits = ModelLimits.of(served.path if served else None, self.settings.max_model_len)
        ids = list(task.prompt_token_ids)
        if not ids and task.prompt and self.model.engine is not None:
            ids = self.model.engine.tokenizer(task.prompt).input_ids
        return task_problem(task, ids, limits, self.job)

    async def _process_batch(self, consumer: StreamConsumer, keys: JobKeys, batch: list[Delivery]) -> None:
        t_start = time.time()
        reload_s = self.reloads.take() if self.reloads else 0.0
        tasks = [d.message for d in batch]
        for d in batch:
            self.metrics.queue_wait.observe(max(0.0, t_start - int(d.entry_id.split("-")[0]) / 1000))
        async with self.model.lock:
            version_start = self.model.serving().version
            requests = [self._request(t) for t in tasks]
            t0 = time.perf_counter()
            groups = await asyncio.to_thread(self.model.engine.generate, requests)
            gen_s = time.perf_counter() - t0
            version_end = self.model.version.version
        self.metrics.generate_seconds.observe(gen_s)
        n_tokens = sum(len(s.token_ids) for g in groups for s in g)
        self.metrics.tokens.inc(n_tokens)
        self.board.rate.add(n_tokens)

        t1 = time.perf_counter()
        try:
            rewards = await self._score_all(tasks, groups)
        except RewardServiceError as exc:
            # Leave the tasks un-ACKed: they are reclaimed (by a peer or this pod) once idle, by then
            # hopefully with a reward service back.
            self.metrics.reward_failures.inc()
            log.error(
                "reward service failed; tasks left for retry", extra={"cause": str(exc), "tasks": len(batch)}
            )
            await self.pause(min(self.settings.claim_idle_s, 5.0))
            return
        score_s = time.perf_counter() - t1
        self.metrics.reward_seconds.observe(score_s)

        # Thousands of completions take a while to wrap; off the event loop, the claim keeps being renewed.
        out = await asyncio.to_thread(
            self._scored_groups, batch, requests, groups, rewards, t_start, (version_start, version_end),
            bus_pb2.Timings(generate_s=gen_s, score_s=score_s, reload_s=reload_s, publish_s=self.publish_s),
        )  # fmt: skip
        t2 = time.perf_counter()
        await consumer.ack_and_publish([d.entry_id for d in batch], keys.groups, out)
        self.publish_s = time.perf_counter() - t2
        self.metrics.publish_seconds.observe(self.publish_s)
        self.metrics.groups.inc(len(out))
        self.board.published(len(out))
        self.metrics.tokens_per_s.set(self.board.rate.per_s())

    def _scored_groups(self, batch, requests, groups, rewards, t_start, versions, timings):
        """The batch's ScoredGroup messages: each task's completions with their rewards."""
        out = []
        for d, request, group, scores in zip(batch, requests, groups, rewards):
            task = d.message
            queued = max(0.0, t_start - int(d.entry_id.split("-")[0]) / 1000)
            out.append(
                scored_group(
                    task, request.prompt_token_ids, group, [(r.reward, r.status) for r in scores],
                    versions=versions, pod=self.settings.pod,
                    timings=bus_pb2.Timings(queued_s=queued, generate_s=timings.generate_s, score_s=timings.score_s,
                                            reload_s=timings.reload_s, publish_s=timings.publish_s),
                )
            )  # fmt: skip
        return out

    def _request(self, task: bus_pb2.PromptTask) -> GenRequest:
        ids = list(task.prompt_token_ids) or self.model.engine.tokenizer(task.prompt).input_ids
        return GenRequest.from_sampling(
            ids, task.group_size, task.sampling, seed=task.sampling.seed, unset_temperature=1.0
        )

    async def _score_all(self, tasks: list[bus_pb2.PromptTask], groups: list[list[GenSample]]) -> list[list]:
        """Every group's rewards, in one reward-service call per verifier (the client splits at its caps)."""
        # One call per group cost a round trip and a pool dispatch each: ~15 ms of a 16-group batch.
        by_verifier: dict[str, list[int]] = {}
        for i, task in enumerate(tasks):
            verifier = task.verifier or (self.job.spec.verifier if self.job else "exact")
            by_verifier.setdefault(verifier, []).append(i)

        async def score(verifier: str, indices: list[int]) -> list:
            texts = [s.text for i in indices for s in groups[i]]
            references = [tasks[i].reference for i in indices for _ in groups[i]]
            return await self.reward.score(verifier, texts, references, self.settings.reward_deadline_s)

        flat = await asyncio.gather(*(score(v, idx) for v, idx in by_verifier.items()))
        rewards: list[list] = [[] for _ in tasks]
        for indices, results in zip(by_verifier.values(), flat):
            it = iter(results)
            for i in indices:
                rewards[i] = [next(it) for _ in groups[i]]
        return rewards
