"""Per-token log-probabilities under the current policy, in float32 whatever the logits' dtype."""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_CHUNK_ROWS = 2048


def _blocks(logits: Tensor, chunk_rows: int):
    """Slices along dim 0 holding about chunk_rows token positions each (views, never copies)."""
    per_index = max(1, logits[0, ..., 0].numel()) if logits.dim() > 1 else 1
    step = max(1, chunk_rows // per_index)
    for start in range(0, logits.shape[0], step):
        yield slice(start, start + step)


class _ChunkedTokenLogprob(torch.autograd.Function):
    """log softmax(logits)[token], block by block, so a float32 copy of all logits never exists.

    Backward recomputes the softmax per block from the (low-precision) logits instead of saving it:
    d/dlogits = grad · (onehot(token) − softmax(logits)).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, tokens: Tensor, chunk_rows: int) -> Tensor:
        out = torch.empty(tokens.shape, dtype=torch.float32, device=logits.device)
        for sl in _blocks(logits, chunk_rows):
            block = logits[sl].float()
            picked = block.gather(-1, tokens[sl].unsqueeze(-1)).squeeze(-1)
            out[sl] = picked - torch.logsumexp(block, dim=-1)
        ctx.save_for_backward(logits, tokens)
        ctx.chunk_rows = chunk_rows
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, tokens = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for sl in _blocks(logits, ctx.chunk_rows):
            g = grad_out[sl].unsqueeze(-1).float()
            block = torch.softmax(logits[sl].float(), dim=-1).mul_(-g)
            block.scatter_add_(-1, tokens[sl].unsqueeze(-1), g)
            grad[sl] = block.to(grad.dtype)
        return grad, None, None


def token_logprobs(logits: Tensor, tokens: Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Tensor:
    """Log-prob of each taken token: logits [..., V] aligned with tokens [...] → float32 [...].

    The caller aligns the two: for a causal LM, logits[:, t] scores tokens[:, t + 1]. Sliced
    (non-contiguous) logits such as logits[:, :-1] are read in place, not copied.
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} disagree: "
            "logits must be tokens' shape plus a vocabulary dimension"
        )
    tokens = tokens.long()
    if logits.dtype in (torch.float32, torch.float64):
        # logsumexp never materializes a log-softmax copy, and no upcast is needed.
        picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        return (picked - torch.logsumexp(logits, dim=-1)).float()
    if logits.dim() == 1:
        return _ChunkedTokenLogprob.apply(logits[None], tokens[None], chunk_rows)[0]
    return _ChunkedTokenLogprob.apply(logits, tokens, chunk_rows)
