"""The update gauges in the distributed learner: neg_share and the gradient norms of the A<0 and A>0 responses.

What they measure is in asympo/algo/update_shares.py. With micro-batches and FSDP2 the gradient of the
negative part cannot be taken with autograd.grad on one graph, so a gauge step makes two passes over
its micro-batches: first every micro-batch with only the A<0 part of the loss (`negative_part`, with
the batch's global normalizers), whose accumulated gradient is kept as g⁻; then, gradients zeroed, the
normal step, whose gradient is g. Both are taken before clipping. Each rank holds disjoint shards of
both (`DTensor.tolocal_part()` under FSDP2, whole tensors on a single CPU rank), so the local dot products
summed over ranks are the global ones. Every rank runs the same number of passes as in a normal step,
twice: a rank short of micro-batches joins with idle passes, and one whose micro-batch has no A<0 row
back-propagates a zero loss, so FSDP's collectives stay aligned.

The cost on a gauge step: one more forward and backward over the batch and one copy of this rank's
gradient shards (on the training device).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from asympo.algo.update_shares import gradient_products, shares_from_products

from .distributed import World, all_sum, local_part

if TYPE_CHECKING:
    from .trainer import Row, Trainer

GAUGE_KEYS = ("neg_share", "grad_norm_neg", "grad_norm_pos")


def is_gauge_step(step: int, every: int) -> bool:
    """Whether step `step` (1-based, as in the step records) computes the update gauges; every = 0: never."""
    return every > 0 and step > 0 and step % every == 0


def negative_gradient(trainer: Trainer, chunks: list[list[Row]], n_micro: int, options: dict) -> list:
    """Back-propagate only the A<0 part of the loss over every micro-batch; returns this rank's gradient
    shards (None where a parameter got none) and leaves the gradients zeroed for the normal step."""
    for i in range(n_micro):
        if i < len(chunks):
            trainer.micro_step(chunks[i], options, {}, {}, negative=True)
        else:
            trainer.idle_micro_step()
    kept = []
    for p in trainer.model.parameters():
        g = local_part(p.grad)
        kept.append(None if g is None else g.detach().clone())
    trainer.optimizer.zero_grad(set_to_none=True)
    return kept


def update_gauges(g_neg: list, model: torch.nn.Module, world: World) -> dict[str, float]:
    """neg_share, grad_norm_neg and grad_norm_pos of the gradient now in `model` against g⁻ (every rank)."""
    pairs = []
    for kept, p in zip(g_neg, model.parameters(), strict=True):
        g = local_part(p.grad)
        if kept is None and g is None:
            continue
        g = torch.zeros_like(kept) if g is None else g.detach()
        pairs.append((torch.zeros_like(g) if kept is None else kept, g))
    products = gradient_products([a for a, _ in pairs], [b for _, b in pairs])
    return shares_from_products(all_sum(products, world))
