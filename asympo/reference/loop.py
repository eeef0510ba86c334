"""The single-process reference loop: stale sampling, verification, and a policy-loss update per step.

Step t samples G responses for each of B prompts with the policy θ_{max(0, t−k)}, exactly k =
max_staleness updates old (younger only while fewer than k updates exist), scores them with the task's
verifier, and updates θ_t → θ_{t+1} with the job's loss on current-policy log-probs. It is the ground
truth that the distributed system's learning is compared with.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from tqdm import tqdm

from asympo.algo import gpg_advantages, group_advantages, negative_part, policy_loss, update_shares
from asympo.jobs.spec import JobSpec
from asympo.models.evaluate import greedy_accuracy
from asympo.models.hf_generate import hf_generate_ids
from asympo.models.loading import load_policy, pick_device, resolve_model_path
from asympo.models.prompts import Prompter
from asympo.models.response_logprobs import pack_responses, response_logprobs, response_start
from asympo.tasks import build_task, exact_match

T = TypeVar("T")

# Verifiers the reference loop can run in-process; the reward service adds the rest.
VERIFIERS: dict[str, Callable[[str, str], float]] = {
    "exact": lambda completion, reference: float(exact_match(completion, reference)),
}


class VersionRing(Generic[T]):
    """The last k+1 policy versions; `oldest` is θ_{max(0, t−k)} once θ_t has been pushed."""

    def __init__(self, k: int, version0: T):
        self.k = k
        self._items: deque[tuple[int, T]] = deque([(0, version0)], maxlen=k + 1)

    def push(self, version: int, item: T) -> None:
        """Record θ_version; the version k+1 back falls out."""
        if version != self._items[-1][0] + 1:
            raise ValueError(f"versions must be pushed in order: got {version} after {self._items[-1][0]}")
        self._items.append((version, item))

    @property
    def oldest(self) -> tuple[int, T]:
        """(version, item) to sample with."""
        return self._items[0]

    @property
    def newest_version(self) -> int:
        """The current version t."""
        return self._items[-1][0]


@dataclass
class RunResult:
    """What a reference run produced: its records and where it wrote them."""

    label: str
    spec: JobSpec
    steps: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    model_path: str = ""
    out_dir: Path | None = None
    seconds: float = 0.0

    @property
    def initial_accuracy(self) -> float:
        """Held-out greedy accuracy before training."""
        return self.evals[0]["accuracy"]

    @property
    def final_accuracy(self) -> float:
        """Held-out greedy accuracy after the last step."""
        return self.evals[-1]["accuracy"]

    def summary(self) -> dict[str, Any]:
        """The headline figures of the run."""
        tail = self.steps[-20:]
        return {
            "label": self.label,
            "loss": self.spec.algorithm.loss,
            "max_staleness": self.spec.algorithm.max_staleness,
            "steps": len(self.steps),
            "seed": self.spec.seed,
            "initial_accuracy": self.initial_accuracy,
            "final_accuracy": self.final_accuracy,
            "accuracy_gain": self.final_accuracy - self.initial_accuracy,
            "best_accuracy": max(e["accuracy"] for e in self.evals),
            "final_reward_mean": sum(s["reward_mean"] for s in tail) / max(1, len(tail)),
            "seconds": round(self.seconds, 1),
        }


def _seed_for(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & (2**63 - 1)


def run_reference(
    spec: JobSpec,
    *,
    label: str | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    on_eval: Callable[[RunResult], None] | None = None,
) -> RunResult:
    """Train spec.algorithm.steps steps in one process and return the per-step and evaluation records."""
    algo, sampling = spec.algorithm, spec.sampling
    if spec.verifier not in VERIFIERS:
        raise ValueError(
            f"verifier {spec.verifier!r} is not available in the reference loop (it has: {', '.join(VERIFIERS)}); "
            "other verifiers run in the reward service"
        )
    verify = VERIFIERS[spec.verifier]
    label = label or f"{algo.loss}-k{algo.max_staleness}"
    t_start = time.perf_counter()
    torch.manual_seed(spec.seed)
    device = pick_device(spec.resources.device)
    task = build_task(spec.task)
    model_path = resolve_model_path(spec, cache_dir, progress=progress)
    policy, tokenizer = load_policy(model_path, spec.model.dtype, device)
    prompter = Prompter.for_model(tokenizer, model_path, spec.task)
    sampler = copy.deepcopy(policy).eval()
    policy.train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=algo.lr, weight_decay=algo.weight_decay)
    ring: VersionRing[dict[str, torch.Tensor]] = VersionRing(algo.max_staleness, _snapshot(policy))
    heldout = task.heldout()
    eval_tokens = spec.eval.max_new_tokens or sampling.max_new_tokens
    stream = task.train_stream(seed=spec.seed)
    result = RunResult(label=label, spec=spec, model_path=model_path)

    def evaluate(step: int) -> None:
        result.evals.append(
            {"step": step, "accuracy": greedy_accuracy(policy, prompter, heldout, eval_tokens, verify=verify)}
        )
        if on_eval:
            on_eval(result)

    evaluate(0)
    bar = tqdm(range(algo.steps), desc=label, unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        t0 = time.perf_counter()
        problems = [next(stream) for _ in range(algo.prompts_per_step)]
        version, state = ring.oldest
        sampler.load_state_dict(state)
        groups = hf_generate_ids(
            sampler,
            tokenizer,
            [prompter.ids(p.prompt) for p in problems],
            n=algo.group_size,
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=_seed_for(sampling.seed, spec.seed, step),
            stop_token_ids=prompter.stop_ids or None,
        )
        rewards = torch.tensor([[verify(s.text, p.reference) for s in g] for g, p in zip(groups, problems)])
        t_gen = time.perf_counter()

        keep = torch.ones(len(problems), dtype=torch.bool)
        if algo.drop_zero_variance:
            keep = rewards.std(dim=1) > 0
        record = {
            "step": step,
            "version_sampled": version,
            "staleness": ring.newest_version - version,
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std()),
            "zero_variance_groups": int((rewards.std(dim=1) == 0).sum()),
            "response_tokens_mean": sum(len(s.token_ids) for g in groups for s in g) / rewards.numel(),
        }
        if keep.any():
            gauges = spec.eval.gauges_every > 0 and step % spec.eval.gauges_every == 0
            record.update(
                _update(spec, policy, sampler, optimizer, prompter, problems, groups, rewards, keep, gauges)
            )
            # One bucket: every sample of a step has the same staleness (the learner's records have several).
            record["by_staleness"] = {
                str(record["staleness"]): {"responses": int(keep.sum()) * algo.group_size}
                | {k: record[k] for k in ("delta", "R", "S_pos", "S_neg")}
            }
        else:
            record["skipped"] = True
        ring.push(step + 1, _snapshot(policy))
        record["seconds"] = time.perf_counter() - t0
        record["generate_seconds"] = t_gen - t0
        result.steps.append(record)
        if (step + 1) % spec.eval.every == 0 or step + 1 == algo.steps:
            evaluate(step + 1)
        bar.set_postfix(reward=f"{record['reward_mean']:.2f}", acc=f"{result.evals[-1]['accuracy']:.2f}")
    bar.close()
    result.seconds = time.perf_counter() - t_start
    return result


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _update(
    spec, policy, sampler, optimizer, prompter, problems, groups, rewards, keep, gauges: bool = False
) -> dict[str, float]:
    """One optimizer step on the kept groups; returns the loss statistics (with the update gauges if asked)."""
    algo = spec.algorithm
    if algo.loss == "gpg":
        A = gpg_advantages(rewards[keep])
    else:
        A = group_advantages(rewards[keep], norm=algo.adv_norm)
    prompt_ids, response_ids = [], []
    for problem, group in (pg for pg, k in zip(zip(problems, groups), keep.tolist()) if k):
        p_ids = prompter.ids(problem.prompt)
        for sample in group:
            prompt_ids.append(p_ids)
            response_ids.append(sample.token_ids)
    device = next(policy.parameters()).device
    input_ids, attention, mask = (
        t.to(device) for t in pack_responses(prompt_ids, response_ids, prompter.tokenizer.pad_token_id)
    )
    first = response_start(prompt_ids)
    mask = mask[:, first:]
    options = algo.options.for_loss()
    if algo.loss == "grpo":
        with torch.no_grad():
            options["behavior_logprobs"] = response_logprobs(sampler, input_ids, attention, first)
    logprobs = response_logprobs(policy, input_ids, attention, first)
    A = A.reshape(-1).to(device)
    loss, stats = policy_loss(algo.loss, logprobs, mask, A, **options)
    params = [p for p in policy.parameters() if p.requires_grad]
    neg = negative_part(algo.loss, logprobs, mask, A, **options) if gauges else None
    g_neg = (
        torch.autograd.grad(neg, params, retain_graph=True, allow_unused=True) if neg is not None else None
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if g_neg is not None:
        zero = torch.zeros_like
        stats.update(update_shares([zero(p) if gn is None else gn for gn, p in zip(g_neg, params)],
                                   [zero(p) if p.grad is None else p.grad for p in params]))  # fmt: skip
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), algo.grad_clip)
    optimizer.step()
    stats["grad_norm"] = float(grad_norm)
    return stats
