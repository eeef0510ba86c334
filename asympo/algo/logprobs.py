"""Per-token log-probabilities under the current policy, in float32 whatever the logits' dtype."""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_CHUNK_ROWS = 2048


class _ChunkedTokenLogprob(torch.autograd.Function):
    """log softmax(logits)[token] row-chunk by row-chunk, so a float32 copy of all logits never exists.

    Backward recomputes the softmax per chunk from the (low-precision) logits instead of saving it:
    d/dlogits = grad · (onehot(token) − softmax(logits)).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, tokens: Tensor, chunk_rows: int) -> Tensor:
        out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for start in range(0, logits.shape[0], chunk_rows):
            rows = logits[start : start + chunk_rows].float()
            tok = tokens[start : start + chunk_rows, None]
            out[start : start + chunk_rows] = (rows.gather(1, tok) - torch.logsumexp(rows, 1, keepdim=True))[
                :, 0
            ]
        ctx.save_for_backward(logits, tokens)
        ctx.chunk_rows = chunk_rows
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, tokens = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for start in range(0, logits.shape[0], ctx.chunk_rows):
            sl = slice(start, start + ctx.chunk_rows)
            g = grad_out[sl, None].float()
            chunk = -torch.softmax(logits[sl].float(), dim=1) * g
            chunk.scatter_add_(1, tokens[sl, None], g)
            grad[sl] = chunk.to(grad.dtype)
        return grad, None, None


def token_logprobs(logits: Tensor, tokens: Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Tensor:
    """Log-prob of each taken token: logits [..., V] aligned with tokens [...] → float32 [...].

    The caller aligns the two: for a causal LM, logits[:, t] scores tokens[:, t + 1].
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} disagree: "
            "logits must be tokens' shape plus a vocabulary dimension"
        )
    V = logits.shape[-1]
    flat = logits.reshape(-1, V)
    tok = tokens.reshape(-1).long()
    if flat.dtype in (torch.float32, torch.float64):
        # logsumexp never materializes a log-softmax copy, and no upcast is needed.
        out = (flat.gather(1, tok[:, None])[:, 0] - torch.logsumexp(flat, dim=1)).float()
    else:
        out = _ChunkedTokenLogprob.apply(flat, tok, chunk_rows)
    return out.view(tokens.shape)
