"""One optimizer step on this rank's share of the global batch, with the loss normalized globally.

Every rank computes current-policy log-probs for its groups' responses (micro-batched, rows sorted by
length so micro-batches pad little) and the job's `policy_loss` with the *global* response count (and
GPG's global token count), so that summing the ranks' gradients gives exactly the gradient of the loss
over the whole batch. FSDP2 averages gradients across ranks, so each rank back-propagates its loss
times the world size (FSDP's divide factor would do the same but needs PREMUL_SUM, which gloo lacks).

A step whose loss or gradient norm is not finite on any rank applies nothing on every rank (the ranks
agree through an all-reduce: a step applied by some shards only would tear the model apart); the
caller drops its groups and counts the skip.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from asympo.algo import group_advantages, negative_part, policy_loss
from asympo.jobs.spec import AlgorithmSpec
from asympo.models.response_logprobs import pack_responses, response_logprobs, response_start
from asympo.proto.v1 import bus_pb2

from .behavior import BehaviorPolicies, behavior_tensor
from .distributed import World, all_min, all_sum
from .staleness_buckets import StalenessBuckets, tag_staleness
from .update_gauges import is_gauge_step, negative_gradient, update_gauges


def shard_model(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """Wrap every decoder layer and then the whole model with FSDP2 (bf16 compute on GPU, fp32 master weights).

    A single CPU rank keeps the plain model: there is nothing to shard, and FSDP's gathers and copies
    around every micro-batch cost ~10% of a small model's step for nothing.
    """
    if world.size == 1 and world.device.type == "cpu":
        return model
    mp = MixedPrecisionPolicy()
    if world.device.type == "cuda":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for module in model.modules():
        if type(module).__name__.endswith("DecoderLayer"):
            fully_shard(module, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


@dataclass
class Row:
    """One response to train on."""

    prompt: list[int]
    response: list[int]
    advantage: float
    version: int = 0  # the policy version that generated it (grpo: its behavior policy)
    behavior: list[float] | None = None  # grpo: set by behavior.py; None: the current log-probs
    staleness: int = 0  # of its group: versions between generation and the weights being trained


def group_rows(
    groups: list[bus_pb2.ScoredGroup], algo: AlgorithmSpec, world: World
) -> tuple[list[Row], dict]:
    """This rank's rows with their advantages (group-relative; GPG's κ uses global counts) and reward stats."""
    local_n = sum(len(g.completions) for g in groups)
    local_nonzero = sum(1 for g in groups for c in g.completions if c.reward != 0)
    local_correct = sum(1 for g in groups for c in g.completions if c.reward == 1.0)
    local_sum = sum(c.reward for g in groups for c in g.completions)
    local_sq = sum(c.reward**2 for g in groups for c in g.completions)
    n, nonzero, correct, r_sum, r_sq = all_sum(
        [local_n, local_nonzero, local_correct, local_sum, local_sq], world
    )
    kappa = n / max(1.0, nonzero)
    rows = []
    for g in groups:
        rewards = torch.tensor([[c.reward for c in g.completions]], dtype=torch.float32)
        if algo.loss == "gpg":
            # GPG: κ·(r − mean), κ over the global batch, no std division (asympo.algo.gpg_advantages).
            A = kappa * (rewards - rewards.mean())
        else:
            A = group_advantages(rewards, norm=algo.adv_norm)
        for c, a in zip(g.completions, A[0].tolist()):
            rows.append(Row(list(g.prompt_token_ids), list(c.token_ids), a, g.gen_version_start))
    mean = r_sum / max(1.0, n)
    stats = {
        "responses": n,
        "reward_mean": mean,
        "reward_std": math.sqrt(max(0.0, r_sq / max(1.0, n) - mean**2)),
        "accuracy": correct / max(1.0, n),
    }
    return rows, stats


class Trainer:
    """The optimizer step of the learner (one per rank)."""

    def __init__(
        self,
        model,
        optimizer,
        world: World,
        algo: AlgorithmSpec,
        pad_id: int,
        micro_batch_rows: int = 64,
        micro_batch_tokens: int = 1 << 30,
        gauges_every: int = 0,
    ):
        self.model = model
        self.optimizer = optimizer
        self.world = world
        self.algo = algo
        self.pad_id = pad_id
        self.micro_batch_rows = micro_batch_rows
        self.micro_batch_tokens = micro_batch_tokens
        # grpo: the recent versions' weights, for behavior log-probs the pods no longer send.
        self.behavior = BehaviorPolicies(model, world, pad_id) if algo.loss == "grpo" else None
        self.gauges_every = gauges_every  # eval.gauges_every: steps between update gauges (update_gauges.py)

    def step(
        self,
        groups: list[bus_pb2.ScoredGroup],
        fault: str = "",
        step: int = 0,
        staleness: list[int] | None = None,
    ) -> dict:
        """Train on this rank's groups; every rank must call it together. Returns global statistics, with
        `skipped` and its `cause` when nothing was applied; `fault` is a test's (failpoints.FAULTS). `step`
        (1-based) decides the update gauges; `staleness` (one per group) splits the balance gauges."""
        t0 = time.perf_counter()
        algo, world = self.algo, self.world
        rows, stats = group_rows(groups, algo, world)
        tag_staleness(rows, groups, staleness)
        rows.sort(key=lambda r: len(r.prompt) + len(r.response))
        if self.behavior is not None:
            stats.update(self.behavior.fill(rows, self._micro_batches))
        local_tokens = sum(len(r.response) for r in rows)
        (global_tokens,) = all_sum([local_tokens], world)
        chunks = self._micro_batches(rows)
        # FSDP's forward and backward are collective: every rank runs as many micro-batches as the busiest.
        n_micro = int(-all_min(-len(chunks), world))
        options = {**algo.options.for_loss(), "num_responses": max(1.0, stats["responses"])}
        if algo.loss == "gpg":
            options["num_tokens"] = max(1.0, global_tokens)
        sums = dict.fromkeys(("loss", "AS", "pos_mass", "neg_mass", "S_pos", "S_neg", "n_pos", "n_neg"), 0.0)
        clip_hits = dict.fromkeys(("clip_high_frac", "clip_low_frac", "clip_frac"), 0.0)
        self.model.train()
        gauge = is_gauge_step(step, self.gauges_every)
        g_neg = negative_gradient(self, chunks, n_micro, options) if gauge else None
        buckets = StalenessBuckets()
        for i in range(n_micro):
            if i < len(chunks):
                buckets.add(chunks[i], self.micro_step(chunks[i], options, sums, clip_hits))
            else:
                self.idle_micro_step()
        if fault and world.is_main:
            if fault == "nonfinite_grad":
                next(p for p in self.model.parameters() if p.grad is not None).grad.fill_(math.nan)
            sums["loss"] = math.nan if fault == "nonfinite_loss" else sums["loss"]
        gauges = update_gauges(g_neg, self.model, world) if gauge else {}  # before clipping
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), algo.grad_clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        cause = "" if math.isfinite(sums["loss"]) else "non-finite loss"
        cause = cause or ("" if math.isfinite(float(grad_norm)) else "non-finite gradient")
        skip = all_min(0.0 if cause else 1.0, world) < 1.0
        if not skip:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        merged = {**sums, **clip_hits}
        totals = dict(zip(merged, all_sum(list(merged.values()), world)))
        n = max(1.0, stats["responses"])
        stats.update(
            {
                "loss": totals["loss"],
                "delta": totals["AS"] / n,
                "R": totals["neg_mass"] / totals["pos_mass"] if totals["pos_mass"] > 0 else math.nan,
                "S_pos": totals["S_pos"] / totals["n_pos"] if totals["n_pos"] else math.nan,
                "S_neg": totals["S_neg"] / totals["n_neg"] if totals["n_neg"] else math.nan,
                "tokens": global_tokens,
                "grad_norm": float(grad_norm),
                "train_seconds": time.perf_counter() - t0,
                "by_staleness": buckets.merged(world),
                **gauges,
            }
        )
        for k in clip_hits:
            if totals[k] or (k == "clip_frac" and algo.loss == "grpo"):  # grpo's is always reported
                stats[k] = totals[k] / max(1.0, global_tokens)
        if skip:
            stats.update(skipped=True, cause=cause or "non-finite loss or gradient on another rank")
        return stats

    def _micro_batches(self, rows: list[Row]) -> list[list[Row]]:
        """Consecutive rows (sorted by length) in batches bounded by rows and by padded tokens.

        On CPUs, ~1k tokens per pass was measured fastest for a 135M model (cache-sized activations);
        on GPUs raise both limits.
        """
        chunks: list[list[Row]] = []
        for row in rows:
            width = len(row.prompt) + len(row.response)  # rows ascend in length: the newest is the widest
            last = chunks[-1] if chunks else None
            if (
                last
                and len(last) < self.micro_batch_rows
                and (len(last) + 1) * width <= self.micro_batch_tokens
            ):
                last.append(row)
            else:
                chunks.append([row])
        return chunks

    def micro_step(
        self, chunk: list[Row], options: dict, sums: dict, clip_hits: dict, negative: bool = False
    ) -> torch.Tensor | None:
        """Forward and backward of one micro-batch; returns its rows' mean token NLLs S (None if `negative`)."""
        device = self.world.device
        prompts = [r.prompt for r in chunk]
        input_ids, attention, mask = (
            t.to(device) for t in pack_responses(prompts, [r.response for r in chunk], self.pad_id)
        )
        first = response_start(prompts)  # positions before it score prompt tokens only
        mask = mask[:, first:]
        A = torch.tensor([r.advantage for r in chunk], device=device)
        kw = dict(options)
        logprobs = response_logprobs(self.model, input_ids, attention, first)
        if self.algo.loss == "grpo":
            kw["behavior_logprobs"] = behavior_tensor(chunk, logprobs, first)
        if negative:  # the update gauges' first pass: the A<0 rows' part of the loss only
            part = negative_part(self.algo.loss, logprobs, mask, A, **kw)
            # A micro-batch without A<0 rows still joins FSDP's backward, with a zero loss.
            zero = torch.where(mask.bool(), logprobs, 0.0).sum() * 0.0
            ((zero if part is None else part) * self.world.size).backward()
            return None
        loss, s = policy_loss(self.algo.loss, logprobs, mask, A, **kw)
        (loss * self.world.size).backward()
        # The balance gauges over the global batch are sums of per-row terms; rebuild them from S and A.
        with torch.no_grad():
            valid = mask.bool()
            S = -torch.where(valid, logprobs.float(), 0.0).sum(1) / valid.sum(1).clamp_min(1)
            pos, neg = A > 0, A < 0
            sums["loss"] += float(loss.detach())
            sums["AS"] += float((A * S).sum())
            sums["pos_mass"] += float((A[pos] * S[pos]).sum())
            sums["neg_mass"] += float((-A[neg] * S[neg]).sum())
            sums["S_pos"] += float(S[pos].sum())
            sums["S_neg"] += float(S[neg].sum())
            sums["n_pos"] += float(pos.sum())
            sums["n_neg"] += float(neg.sum())
        tokens = s.get("tokens", 0.0)
        for k in clip_hits:
            if k in s:
                clip_hits[k] += s[k] * tokens  # back to counts; divided by the global tokens at the end
        return S

    def idle_micro_step(self) -> None:
        """A zero-loss forward and backward: a rank with fewer micro-batches still joins FSDP's collectives."""
        x = torch.full((1, 2), self.pad_id, device=self.world.device)
        (self.model(input_ids=x).logits.sum() * 0.0).backward()
