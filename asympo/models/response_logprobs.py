"""Current-policy log-probs of response tokens for a batch of (prompt, response) token sequences."""

from __future__ import annotations

import torch
from torch import Tensor

from asympo.algo import token_logprobs


def pack_responses(
    prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded prompt+response rows: input_ids [N, L], attention_mask [N, L], response_mask [N, L-1].

    response_mask[:, t] marks positions whose logits (at t) score a response token (at t + 1).
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    rows = [p + r for p, r in zip(prompt_ids, response_ids)]
    L = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), L), dtype=torch.long)
    response_mask = torch.zeros((len(rows), max(L - 1, 1)), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        if not p:
            raise ValueError(f"row {i}: empty prompt (the first response token needs a context)")
        input_ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        attention_mask[i, : len(p) + len(r)] = 1
        response_mask[i, len(p) - 1 : len(p) - 1 + len(r)] = 1
    return input_ids, attention_mask, response_mask


def response_start(prompt_ids: list[list[int]]) -> int:
    """The first next-token position that scores a response token in a pack_responses batch."""
    return min(len(p) for p in prompt_ids) - 1


def response_logprobs(model, input_ids: Tensor, attention_mask: Tensor, start: int = 0) -> Tensor:
    """ℓ for next-token positions start..L-2, [N, L-1-start] float32; pair it with response_mask[:, start:].

    Logits are computed only from position `start` on (`logits_to_keep`): with long prompts most of
    a batch's positions are prompt, and their vocabulary-sized logits would be computed for nothing.
    """
    keep = input_ids.shape[1] - start
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep).logits
    except TypeError:  # an architecture without logits_to_keep: compute all, use the tail
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, start:]
    return token_logprobs(logits[:, :-1], input_ids[:, start + 1 :])
