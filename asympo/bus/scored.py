"""Building the ScoredGroup a prompt task turns into, the same way on a pod and in the reference sampler."""

from __future__ import annotations

from collections.abc import Sequence

from asympo.models.generation import GenSample
from asympo.proto.v1 import bus_pb2


def scored_group(
    task: bus_pb2.PromptTask, prompt_token_ids: Sequence[int], samples: Sequence[GenSample],
    scores: Sequence[tuple[float, str]], *, versions: tuple[int, int], pod: str, behavior_logprobs: bool,
    timings: bus_pb2.Timings | None = None,
) -> bus_pb2.ScoredGroup:  # fmt: skip
    """One task's completions with their (reward, status); behavior log-probs only when the loss needs them."""
    return bus_pb2.ScoredGroup(
        job_id=task.job_id,
        prompt_id=task.prompt_id,
        prompt_token_ids=prompt_token_ids,
        completions=[
            bus_pb2.Completion(
                token_ids=s.token_ids,
                text=s.text,
                reward=reward,
                finish_reason=s.finish_reason,
                reward_status=status,
                behavior_logprobs=s.logprobs if behavior_logprobs else [],
            )  # fmt: skip
            for s, (reward, status) in zip(samples, scores)
        ],
        gen_version_start=versions[0],
        gen_version_end=versions[1],
        pod=pod,
        timings=timings,
    )
