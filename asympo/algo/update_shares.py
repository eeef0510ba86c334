"""Where an update comes from: the gradient of the negative-advantage responses against the whole step's.

Δ and R (losses.py) weigh responses by their current NLL, which every loss sees alike; they cannot
tell how a loss turns those terms into an update. These gauges can, for any loss. With g the gradient
of the step's loss and g⁻ the gradient of the same loss over the responses with A < 0 only (with the
whole batch's normalizers N and T, so that g = g⁻ + g⁺ exactly):

    neg_share = ⟨g⁻, g⟩ / ‖g‖²        the part of the update, along its own direction, that the A < 0
                                      responses supply (g⁺ supplies 1 − neg_share)
    grad_norm_neg = ‖g⁻‖, grad_norm_pos = ‖g⁺‖

On stale samples the wrong answers are improbable under the current policy, so their token gradients
are large: under the naive loss they come to dominate the update (neg_share grows well past ½ while
the model is pushed away from wrong answers more than towards right ones); ASymPO divides each
response by its own NLL and keeps the two sides comparable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from asympo.algo.losses import policy_loss


def negative_part(
    method: str, logprobs: Tensor, mask: Tensor, advantages: Tensor, **options
) -> Tensor | None:
    """The method's loss over the A < 0 responses alone, normalized as in the whole batch (None if none)."""
    neg = advantages < 0
    if not bool(neg.any()):
        return None
    sub = {**options, "num_responses": options.get("num_responses") or logprobs.shape[0]}
    if method == "gpg":
        sub["num_tokens"] = options.get("num_tokens") or float(mask.bool().sum().clamp_min(1))
    if options.get("behavior_logprobs") is not None:
        sub["behavior_logprobs"] = options["behavior_logprobs"][neg]
    loss, _ = policy_loss(method, logprobs[neg], mask[neg], advantages[neg], **sub)
    return loss


def gradient_products(g_neg: Sequence[Tensor], g: Sequence[Tensor]) -> list[float]:
    """[⟨g⁻, g⟩, ‖g‖², ‖g⁻‖², ‖g − g⁻‖²] over all tensors flattened (float64): sums, so shards add up."""
    dot = gg = nn = pp = 0.0
    for a, b in zip(g_neg, g, strict=True):
        a, b = a.double(), b.double()
        dot += float((a * b).sum())
        gg += float((b * b).sum())
        nn += float((a * a).sum())
        pp += float(((b - a) ** 2).sum())
    return [dot, gg, nn, pp]


def shares_from_products(products: Sequence[float]) -> dict[str, float]:
    """neg_share and the two norms from gradient_products (summed over shards or ranks first if split)."""
    dot, gg, nn, pp = products
    return {
        "neg_share": dot / gg if gg > 0 else math.nan,
        "grad_norm_neg": math.sqrt(max(0.0, nn)),
        "grad_norm_pos": math.sqrt(max(0.0, pp)),
    }


def update_shares(g_neg: Sequence[Tensor], g: Sequence[Tensor]) -> dict[str, float]:
    """neg_share = ⟨g⁻, g⟩ / ‖g‖² and the norms of g⁻ and g⁺ = g − g⁻, over all tensors flattened."""
    return shares_from_products(gradient_products(g_neg, g))
