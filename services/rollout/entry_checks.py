"""What a rollout pod refuses of what it reads: tasks it must not give its engine, control events it cannot follow.

A task reaches the engine only if its own values cannot make generation fail: vLLM looks token ids up in
its embedding without checking them against the vocabulary, and a task that makes the engine raise
stays pending until `max_deliveries` dead-letters it, minutes later, after failing the batches it was
part of. So the pod checks what the engine would trip on and dead-letters the task at once with the
reason. Checks against the job (its verifier; for evaluation tasks also their size and sample count,
which only the learner sets) keep a pod from spending its engine on work nobody can use.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from asympo.jobs.live_knobs import live_knob
from asympo.jobs.records import JobRecord
from asympo.jobs.spec_errors import SpecError
from asympo.proto.v1 import bus_pb2

MAX_GROUP_SIZE = 1024
MAX_TEMPERATURE = 100.0
MAX_EVAL_PROMPTS = 1024
MAX_EVAL_SAMPLES = 64
CONTROL_KINDS = ("pause", "resume", "cancel", "set")


@dataclass(frozen=True)
class ModelLimits:
    """What the served model accepts: token ids below `vocab`, prompts shorter than `positions`."""

    vocab: int | None = None
    positions: int | None = None

    @staticmethod
    def of(version_dir: Path | None, max_model_len: int | None = None) -> ModelLimits:
        """The limits from a version directory's config.json (none known without one)."""
        if version_dir is None:
            return ModelLimits(positions=max_model_len)
        vocab, positions = _config_limits(str(version_dir))
        if max_model_len is not None:
            positions = min(positions or max_model_len, max_model_len)
        return ModelLimits(vocab, positions)


@functools.lru_cache(maxsize=8)
def _config_limits(version_dir: str) -> tuple[int | None, int | None]:
    try:
        config = json.loads((Path(version_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None, None
    text = config.get("text_config") or {}
    vocab = config.get("vocab_size") or text.get("vocab_size")
    positions = config.get("max_position_embeddings") or text.get("max_position_embeddings")
    return (vocab if isinstance(vocab, int) else None), (positions if isinstance(positions, int) else None)


def token_problem(ids: Sequence[int], limits: ModelLimits, what: str) -> str | None:
    """Why these token ids cannot go to the engine, or None."""
    if not ids:
        return f"{what} has no token ids"
    low, high = min(ids), max(ids)
    if low < 0 or (limits.vocab is not None and high >= limits.vocab):
        return f"{what} has token id {low if low < 0 else high} outside the vocabulary (0..{limits.vocab})"
    if limits.positions is not None and len(ids) >= limits.positions:
        return f"{what} has {len(ids)} tokens; the model takes fewer than {limits.positions}"
    return None


def sampling_problem(sp: bus_pb2.SamplingParams, limits: ModelLimits, what: str) -> str | None:
    """Why these sampling parameters cannot go to the engine, or None (zero fields mean unset)."""
    if sp.max_new_tokens < 0:
        return f"{what}: negative max_new_tokens {sp.max_new_tokens}"
    if not (math.isfinite(sp.temperature) and 0 <= sp.temperature <= MAX_TEMPERATURE):
        return f"{what}: temperature {sp.temperature} outside 0..{MAX_TEMPERATURE}"
    if sp.seed < 0:
        return f"{what}: negative seed {sp.seed}"
    stops = list(sp.stop_token_ids)
    if stops and (min(stops) < 0 or (limits.vocab is not None and max(stops) >= limits.vocab)):
        return f"{what}: a stop token id outside the vocabulary (0..{limits.vocab})"
    return None


def _verifier_problem(verifier: str, job: JobRecord | None) -> str | None:
    if verifier and job is not None and verifier != job.spec.verifier:
        return f"verifier {verifier[:60]!r} is not the job's ({job.spec.verifier!r})"
    return None


def task_problem(
    task: bus_pb2.PromptTask, ids: Sequence[int], limits: ModelLimits, job: JobRecord | None
) -> str | None:
    """Why a PromptTask (its prompt tokenized to `ids`) must not be generated, or None."""
    if not task.prompt and not task.prompt_token_ids:
        return "prompt task has neither prompt nor prompt_token_ids"
    if not 1 <= task.group_size <= MAX_GROUP_SIZE:
        return f"group_size {task.group_size} outside 1..{MAX_GROUP_SIZE}"
    return (
        sampling_problem(task.sampling, limits, "sampling")
        or token_problem(ids, limits, "prompt")
        or _verifier_problem(task.verifier, job)
    )


def eval_task_problem(task: bus_pb2.EvalTask, limits: ModelLimits, job: JobRecord | None) -> str | None:
    """Why an EvalTask must not be generated, or None."""
    most = job.spec.eval.chunk_prompts if job is not None else MAX_EVAL_PROMPTS
    samples = job.spec.eval.samples if job is not None else None
    if not task.eval_id or task.version < 0 or task.chunks < 1:
        return (
            f"eval_id {task.eval_id[:60]!r}, version {task.version} or chunks {task.chunks} unset or negative"
        )
    if not 1 <= len(task.prompts) <= most:
        return f"{len(task.prompts)} prompts; an evaluation task has 1..{most}"
    if not 0 <= task.samples <= MAX_EVAL_SAMPLES:
        return f"samples {task.samples} outside 0..{MAX_EVAL_SAMPLES}"
    if samples is not None and task.samples != samples:
        return f"samples {task.samples} is not the job's ({samples})"
    for i, prompt in enumerate(task.prompts):
        problem = token_problem(prompt.prompt_token_ids, limits, f"prompt {i}")
        if problem:
            return problem
    return (
        sampling_problem(task.greedy, limits, "greedy")
        or sampling_problem(task.sampling, limits, "sampling")
        or _verifier_problem(task.verifier, job)
    )


def control_problem(event: bus_pb2.ControlEvent, job: JobRecord | None) -> str | None:
    """Why a pod cannot follow a ControlEvent, or None; `job` is the record read after the event."""
    if event.kind not in CONTROL_KINDS:
        return f"unknown control kind {event.kind[:60]!r}; one of {', '.join(CONTROL_KINDS)}"
    if event.kind == "cancel" and job is not None and job.state != "cancelled":
        # The gateway cancels the record before it announces the cancel, and a cancelled job stays so.
        return f"cancel announced, but the job record says {job.state!r}"
    if event.kind == "set":
        try:
            live_knob(event.key)
            json.loads(event.value)
        except SpecError:
            return f"set of {event.key[:60]!r}, which is no live knob"
        except ValueError:
            return f"set of {event.key!r} to {event.value[:60]!r}, which is not JSON"
    return None
