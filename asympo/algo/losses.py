"""The policy losses (docs/algorithm.md): ASymPO and its baselines, read top to bottom.

Notation: for response g of the batch with m_g response tokens,
    ℓ_{g,i} = log π_θ(a_{g,i} | x, a_{g,<i})      current-policy token log-prob
    S_g     = −(1/m_g) Σ_i ℓ_{g,i}                 mean token NLL, S_g > 0
    A_g                                           group-relative advantage, Σ_{g∈group} A_g = 0
    sg(·)                                         stop-gradient (.detach())
Every loss is a mean over the N responses of a per-response term (GPG: over all tokens).

    naive   (1/N) Σ_g A_g · S_g                          ∂/∂ℓ_{g,i} = −A_g / (N m_g)
    spo     (1/N) Σ_g Ã_g · S_g,  Ã = A or α·A if A < 0   ∂/∂ℓ_{g,i} = −Ã_g / (N m_g)
    asympo  (1/N) Σ_g A_g · S_g / sg(max(S_g, ε))         ∂/∂ℓ_{g,i} = −A_g / (N m_g S_g)
    gpg     −(1/T) Σ_{g,i} A_g · ℓ_{g,i},  T = Σ_g m_g   ∂/∂ℓ_{g,i} = −A_g / T
    grpo    (1/N) Σ_g −(1/m_g) Σ_i min(ρ A_g, clip(ρ, 1±ε_c) A_g),  ρ = exp(ℓ − ℓ^b)

ASymPO's value is exactly (1/N) Σ_g A_g, i.e. 0 for zero-sum advantages; its gradient is that of
(1/N) Σ_g A_g log S_g, so each response's push is scaled by its own current NLL (arXiv 2606.03070, Eq. 4).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

METHODS = ("asympo", "spo", "naive", "gpg", "grpo")

# Options each method accepts; every method also takes num_responses (the global N across ranks).
METHOD_OPTIONS: dict[str, dict[str, float | None]] = {
    "asympo": {"eps": 1e-6, "clip_low": None, "clip_high": None},
    "spo": {"alpha": 0.2},
    "naive": {},
    "gpg": {"num_tokens": None},
    "grpo": {"clip_eps": 0.2},
}


def _options(method: str, given: dict) -> dict:
    if method not in METHODS:
        raise ValueError(f"unknown loss method {method!r}; choose one of {', '.join(METHODS)}")
    allowed = {**METHOD_OPTIONS[method], "num_responses": None}
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise TypeError(
            f"loss {method!r} takes no option {', '.join(map(repr, unknown))}; "
            f"its options are {', '.join(sorted(allowed))}"
        )
    return {**allowed, **given}


def _check_inputs(logprobs: Tensor, mask: Tensor, advantages: Tensor, behavior: Tensor | None) -> None:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must have shape [N, T], got {tuple(logprobs.shape)}")
    if mask.shape != logprobs.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must match logprobs {tuple(logprobs.shape)}")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(
            f"advantages must have shape [N] = [{logprobs.shape[0]}], got {tuple(advantages.shape)}"
        )
    if behavior is not None and behavior.shape != logprobs.shape:
        raise ValueError(
            f"behavior_logprobs {tuple(behavior.shape)} must match logprobs {tuple(logprobs.shape)}"
        )


def mean_token_nll(ell: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """S_g = −(1/m_g) Σ_i ℓ_{g,i} over valid tokens, with m_g (≥ 1 to keep empty responses finite)."""
    m = valid.sum(dim=1).clamp_min(1).to(ell.dtype)
    return -ell.sum(dim=1) / m, m


def asympo_clip(ell: Tensor, valid: Tensor, A: Tensor, clip_low: float | None, clip_high: float | None):
    """Appendix-C stabilizer: ℓ̂ = min(ℓ, log p_high) if A ≥ 0, max(ℓ, log p_low) if A < 0; clipped → no grad."""
    pos = (A >= 0)[:, None] & valid
    neg = (A < 0)[:, None] & valid
    hit_high = pos & (ell > math.log(clip_high)) if clip_high is not None else torch.zeros_like(valid)
    hit_low = neg & (ell < math.log(clip_low)) if clip_low is not None else torch.zeros_like(valid)
    ell_hat = ell
    if clip_high is not None:
        ell_hat = torch.where(hit_high, torch.full_like(ell, math.log(clip_high)), ell_hat)
    if clip_low is not None:
        ell_hat = torch.where(hit_low, torch.full_like(ell, math.log(clip_low)), ell_hat)
    stats = {
        "clip_high_frac": _frac(hit_high, pos),
        "clip_low_frac": _frac(hit_low, neg),
    }
    return ell_hat, stats


def _frac(hit: Tensor, among: Tensor) -> float:
    n = int(among.sum())
    return float(hit.sum()) / n if n else 0.0


def _balance_stats(S: Tensor, A: Tensor, N: float) -> dict[str, float]:
    """The failure-mode gauges, on raw (unnormalized) terms: Δ = (1/N) Σ A S and R = Σ_{A<0}|A|S / Σ_{A>0}AS."""
    S, A = S.detach(), A.detach()
    pos, neg = A > 0, A < 0
    pos_mass = float((A[pos] * S[pos]).sum())
    neg_mass = float((-A[neg] * S[neg]).sum())
    return {
        "S_pos": float(S[pos].mean()) if pos.any() else math.nan,
        "S_neg": float(S[neg].mean()) if neg.any() else math.nan,
        "delta": float((A * S).sum()) / N,
        "R": neg_mass / pos_mass if pos_mass > 0 else math.nan,
        "n_pos": float(pos.sum()),
        "n_neg": float(neg.sum()),
    }


def policy_loss(
    method: str,
    logprobs: Tensor,
    mask: Tensor,
    advantages: Tensor,
    *,
    behavior_logprobs: Tensor | None = None,
    **options,
) -> tuple[Tensor, dict[str, float]]:
    """The chosen method's loss over N responses (module docstring) and its step statistics.

    logprobs [N, T]: current-policy ℓ of the response tokens; mask [N, T]: 1 for response tokens, 0 for
    padding; advantages [N]. Options per method are in METHOD_OPTIONS; `num_responses` (and GPG's
    `num_tokens`) give the global batch size when the batch is split across data-parallel ranks.
    """
    opts = _options(method, options)
    _check_inputs(logprobs, mask, advantages, behavior_logprobs)
    if method == "grpo" and behavior_logprobs is None:
        raise ValueError("loss 'grpo' needs behavior_logprobs (the sampling version's log-probs)")
    if method != "grpo" and behavior_logprobs is not None:
        raise ValueError(
            f"loss {method!r} uses current-policy log-probs only; behavior_logprobs are for 'grpo'"
        )

    valid = mask.bool()
    # where(), not multiplication: padding may hold -inf or NaN and must not leak into values or grads.
    ell = torch.where(valid, logprobs.float(), 0.0)
    A = advantages.float()
    N = float(opts["num_responses"] or logprobs.shape[0])
    S, m = mean_token_nll(ell, valid)
    stats = _balance_stats(S, A, N)
    stats["tokens"] = float(valid.sum())

    if method == "naive":
        loss = (A * S).sum() / N

    elif method == "spo":
        alpha = opts["alpha"]
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"spo alpha must be in [0, 1], got {alpha}")
        A_tilde = torch.where(A >= 0, A, alpha * A)
        loss = (A_tilde * S).sum() / N

    elif method == "asympo":
        eps, clip_low, clip_high = opts["eps"], opts["clip_low"], opts["clip_high"]
        _check_prob("clip_low", clip_low)
        _check_prob("clip_high", clip_high)
        if clip_low is not None or clip_high is not None:
            ell_hat, clip_stats = asympo_clip(ell, valid, A, clip_low, clip_high)
            S, _ = mean_token_nll(ell_hat, valid)
            stats.update(clip_stats)
        # S / sg(S) first: it is exactly 1.0 in floating point, so each term is exactly A_g.
        # No balance ratio of the normalized terms: they are |A_g|·1, so on zero-sum groups it would be
        # exactly 1 by construction and measure nothing.
        loss = (A * (S / S.detach().clamp_min(eps))).sum() / N

    elif method == "gpg":
        T = float(opts["num_tokens"] or valid.sum().clamp_min(1))
        loss = -(A[:, None] * ell).sum() / T

    else:  # grpo
        clip_eps = opts["clip_eps"]
        if not 0.0 < clip_eps < 1.0:
            raise ValueError(f"grpo clip_eps must be in (0, 1), got {clip_eps}")
        ell_b = torch.where(valid, behavior_logprobs.float(), 0.0)
        rho = torch.exp(ell - ell_b)
        unclipped = rho * A[:, None]
        clipped = torch.clamp(rho, 1.0 - clip_eps, 1.0 + clip_eps) * A[:, None]
        per_token = torch.where(valid, -torch.minimum(unclipped, clipped), 0.0)
        loss = (per_token.sum(dim=1) / m).sum() / N
        stats["clip_frac"] = _frac(valid & (clipped < unclipped), valid)
        stats["ratio_mean"] = float(rho.detach()[valid].mean()) if valid.any() else 1.0

    stats["loss"] = float(loss.detach())
    return loss, stats


def _check_prob(name: str, p: float | None) -> None:
    if p is not None and not 0.0 < p < 1.0:
        raise ValueError(f"asympo {name} must be a probability in (0, 1), got {p}")
