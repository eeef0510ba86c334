"""The dispatcher: PromptTasks for the job's training stream, as many as admission control allows.

In flight = dispatched − trained − dropped (asympo.bus.flow); it is kept ≤ (max_staleness + 1) ×
prompts_per_step, so no group can start generating more than max_staleness versions behind. The
dispatch position lives in Redis (the `dispatched` counter), so a restarted learner continues the
seeded stream exactly where it stopped and never reuses a prompt_id. Each dispatch moves the position
only from where this dispatcher left it (compare-and-set, fenced by the learner's lease), so a
re-sent dispatch or a second learner can neither skip nor repeat prompts. Dispatch also waits while
the job holds more bytes in Redis than its budget (`hold`, set by housekeeping).
"""

from __future__ import annotations

import hashlib
import itertools

import redis.asyncio as aioredis

from asympo.bus import Fence, JobKeys, admission_limit, dispatch, read_flow
from asympo.jobs.spec import JobSpec
from asympo.models.prompts import Prompter
from asympo.proto.v1 import bus_pb2
from asympo.tasks import build_task


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")


class Dispatcher:
    """Feeds `asympo:{job}:prompts`; run by rank 0."""

    def __init__(
        self,
        redis: aioredis.Redis,
        job_id: str,
        spec: JobSpec,
        prompter: Prompter,
        fence: Fence | None = None,
    ):
        self.redis = redis
        self.fence = fence
        self.keys = JobKeys(job_id)
        self.spec = spec
        self.prompter = prompter
        self._stream = None
        self._position = 0
        self.max_staleness = spec.algorithm.max_staleness
        self.hold = ""  # why dispatching is held (e.g. the job is over its Redis byte budget); "" = go

    async def _seek(self) -> None:
        flow = await read_flow(self.redis, self.keys)
        stream = build_task(self.spec.task).train_stream(seed=self.spec.seed)
        self._stream = itertools.islice(stream, flow.dispatched, None)
        self._position = flow.dispatched

    async def fill(self, version: int) -> int:
        """Dispatch up to the admission limit at `version`; returns how many were dispatched."""
        if self._stream is None:
            await self._seek()
        if self.hold:
            return 0
        algo = self.spec.algorithm
        flow = await read_flow(self.redis, self.keys)
        room = admission_limit(self.max_staleness, algo.prompts_per_step) - flow.in_flight
        if room <= 0:
            return 0
        sampling = self.spec.sampling
        tasks = []
        start = self._position
        for index, problem in enumerate(itertools.islice(self._stream, room), start):
            tasks.append(
                bus_pb2.PromptTask(
                    job_id=self.keys.job_id,
                    prompt_id=problem.prompt_id,
                    prompt=problem.prompt,
                    prompt_token_ids=self.prompter.ids(problem.prompt),
                    reference=problem.reference,
                    group_size=algo.group_size,
                    sampling=bus_pb2.SamplingParams(
                        max_new_tokens=sampling.max_new_tokens,
                        temperature=sampling.temperature,
                        top_p=sampling.top_p,
                        seed=_seed(self.spec.seed, sampling.seed, index),
                        stop_token_ids=self.prompter.stop_ids,
                    ),  # fmt: skip
                    dispatch_version=version,
                    verifier=self.spec.verifier,
                )
            )
        if not tasks:
            return 0
        try:
            self._position = await dispatch(self.redis, self.keys, tasks, position=start, fence=self.fence)
        except BaseException:
            # Moved by someone else, or unknown after a lost connection: re-read the position next time.
            self._stream = None
            raise
        return len(tasks)
