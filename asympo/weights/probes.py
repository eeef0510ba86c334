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
    sequences = probe_token_ids(tokenizer, texts)
    if sequences:
        # One padded forward for all of them: the learner pays this on every version it publishes.
        width = max(len(ids) for ids, _ in sequences)
        x = torch.zeros((len(sequences), width), dtype=torch.long, device=device)
        mask = torch.zeros_like(x)
        for row, (ids, _) in enumerate(sequences):
            x[row, : len(ids)] = torch.tensor(ids, device=device)
            mask[row, : len(ids)] = 1
        with torch.no_grad():
            logits = model(input_ids=x, attention_mask=mask).logits.float()
        for row, (ids, p) in enumerate(sequences):
            lps = token_logprobs(logits[row, p - 1 : len(ids) - 1], x[row, p : len(ids)]).tolist()
            probes.append(Probe(ids, p, lps))
    model.train(was_training)
    return probes
