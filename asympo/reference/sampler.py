"""The reference sampler: one process standing in for the rollout pods and the reward service.

It follows a job's bus exactly as the services do: reads PromptTasks from `asympo:{job}:prompts`
(group `rollout`), samples G responses per prompt with the newest *announced* policy version (HF
generate, the reference loop's sampler), scores them with the reference loop's in-process verifier,
and writes ScoredGroups to `asympo:{job}:groups` while ACKing the tasks in one transaction. Tests and
benchmarks drive the learner with it when vLLM and the reward service are not the point.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from safetensors.torch import load_file

from asympo.bus import GROUP_ROLLOUT, JobKeys, StreamConsumer
from asympo.bus.policy_stream import PolicyReader
from asympo.bus.scored import scored_group
from asympo.jobs.records import FINAL_STATES, JobRecord, get_job
from asympo.models.generation import GenRequest
from asympo.models.hf_generate import hf_generate_ids
from asympo.models.loading import load_policy
from asympo.proto.v1 import bus_pb2
from asympo.weights.store import WeightsError, local_path, verify_version

from .loop import VERIFIERS

log = logging.getLogger(__name__)


class ReferenceSampler:
    """Turns a job's PromptTasks into ScoredGroups with plain PyTorch generation, one batch at a time."""

    def __init__(
        self, redis: aioredis.Redis, job: JobRecord, name: str = "reference-sampler", batch_prompts: int = 16
    ):
        if job.spec.verifier not in VERIFIERS:
            raise ValueError(
                f"the reference sampler verifies with {sorted(VERIFIERS)}, not {job.spec.verifier!r}"
            )
        self.redis = redis
        self.job = job
        self.keys = JobKeys(job.job_id)
        self.name = name
        self.batch_prompts = batch_prompts
        self.verify = VERIFIERS[job.spec.verifier]
        self.model = None
        self.tokenizer = None
        self.version = -1
        self.policy = PolicyReader(redis, name)
        self.groups_published = 0
        self.consumer = StreamConsumer(
            redis, self.keys.prompts, GROUP_ROLLOUT, name, bus_pb2.PromptTask,
            dead_stream=self.keys.dead, job_id=job.job_id, flow_key=self.keys.flow,
        )  # fmt: skip

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Sample until `stop` is set or the job ends."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            job = await get_job(self.redis, self.job.job_id)
            if job is None or job.state in FINAL_STATES:
                return
            if await self.step() == 0:
                await asyncio.sleep(0.05)

    async def step(self) -> int:
        """Reload if a newer version is announced, then turn up to `batch_prompts` tasks into groups."""
        await self._follow_policy()
        if self.model is None:
            return 0
        batch = await self.consumer.read(self.batch_prompts, block_ms=200)
        if not batch:
            return 0
        if max(d.message.dispatch_version for d in batch) > self.version:
            await self._follow_policy()  # as a pod does: never start a task behind its dispatch version
        tasks = [d.message for d in batch]
        version = self.version
        groups = await asyncio.to_thread(self._generate, tasks)
        out = [
            scored_group(
                task,
                task.prompt_token_ids,
                samples,
                [(self.verify(s.text, task.reference), "ok") for s in samples],
                versions=(version, version),
                pod=self.name,
            )  # fmt: skip
            for task, samples in zip(tasks, groups)
        ]
        await self.consumer.ack_and_publish([d.entry_id for d in batch], self.keys.groups, out)
        self.groups_published += len(out)
        return len(out)

    def _generate(self, tasks: list[bus_pb2.PromptTask]):
        out = []
        for task in tasks:  # one call per task: each has its own seed
            ids = list(task.prompt_token_ids) or self.tokenizer(task.prompt).input_ids
            r = GenRequest.from_sampling(
                ids,
                task.group_size,
                task.sampling,
                seed=task.sampling.seed,
                unset_temperature=1.0,
            )
            out += hf_generate_ids(
                self.model, self.tokenizer, [r.prompt_token_ids], n=r.n, max_new_tokens=r.max_new_tokens,
                temperature=r.temperature, top_p=r.top_p, seed=r.seed, logprobs=r.logprobs,
            )  # fmt: skip
        return out

    async def _follow_policy(self) -> None:
        # Like a pod: a forged or broken announcement is refused and the newest real one served.
        for _ in range(PolicyReader.MAX_REFUSALS + 1):
            pv = await self.policy.newest(self.keys, lambda v: v.version > self.version)
            if pv is None:
                return
            path = local_path(pv.uri)
            try:
                if path is None:
                    raise WeightsError(
                        f"the reference sampler reads versions from a shared directory, not {pv.uri}"
                    )
                await asyncio.to_thread(verify_version, path, pv.sha256)
                break
            except WeightsError as exc:
                log.warning("version refused: %s", exc)
                await self.policy.refuse(self.keys, pv, str(exc))
        else:
            return
        if self.model is None:
            self.model, self.tokenizer = await asyncio.to_thread(load_policy, str(path), "float32", "cpu")
            self.model.eval()
        else:
            state = await asyncio.to_thread(load_file, str(path / "model.safetensors"))
            # Tied embeddings are saved once: the tied head is "missing" and keeps pointing at them.
            unexpected = self.model.load_state_dict(state, strict=False).unexpected_keys
            if unexpected:
                raise ValueError(f"version {pv.version} has tensors the model lacks: {unexpected[:3]}")
        self.version = pv.version
        log.debug("sampler serves version %d", pv.version)
