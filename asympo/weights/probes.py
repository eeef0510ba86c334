"""Probes: log-probs of fixed token sequences under a version's weights.

A rollout pod compares them with what its engine serves after a reload: a silently stale lm_head (tied
embeddings that did not follow) shows up there, not in a checksum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_PROBE_TEXTS = ("12+34=46", "7*8=56", "99-17=82", " the answer is 3")


@dataclass
class Probe:
    """A fixed token sequence and the log-prob of each token after prompt_len, given its prefix."""

    token_ids: list[int]
    prompt_len: int
    logprobs: list[float]


def probe_token_ids(tokenizer, texts: Sequence[str] | None = None) -> list[tuple[list[int], int]]:
    """Fixed probe sequences as (token_ids, prompt_len): the first half is context, the rest is scored."""
    out = []
    for text in texts or DEFAULT_PROBE_TEXTS:
        ids = tokenizer(text).input_ids
        if len(ids) >= 2:
            out.append((ids, max(1, len(ids) // 2)))
    return out


def compute_probes(model, tokenizer, texts: Sequence[str] | None = None) -> list[Probe]:
    """Each probe's continuation log-probs under `model` (an HF causal LM), in float32."""
    import torch

    from asympo.algo import token_logprobs

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probes = []
    with torch.no_grad():
        for ids, p in probe_token_ids(tokenizer, texts):
            x = torch.tensor([ids], device=device)
            logits = model(input_ids=x).logits[0]
            lps = token_logprobs(logits[p - 1 : -1], x[0, p:]).tolist()
            probes.append(Probe(ids, p, lps))
    model.train(was_training)
    return probes
