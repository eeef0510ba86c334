"""Sampling and greedy decoding with transformers' `generate`, returning token ids cut at EOS."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig


@dataclass
class Sample:
    """One generated response: its token ids (EOS included when it stopped), text and finish reason."""

    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (EOS) or "length" (max_new_tokens reached)


@torch.no_grad()
def hf_generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    n: int = 1,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    seed: int | None = None,
) -> list[list[Sample]]:
    """n samples (or one greedy continuation) for each prompt; sampling is plain temperature/top-p, no top-k."""
    if greedy and n != 1:
        raise ValueError("greedy decoding gives one continuation per prompt; use n=1")
    device = next(model.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(device)
    config = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else temperature,
        top_p=None if greedy else top_p,
        top_k=None if greedy else 0,
        max_new_tokens=max_new_tokens,
        num_return_sequences=n,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate(**enc, generation_config=config)
    new = out[:, enc["input_ids"].shape[1] :].tolist()
    eos = tokenizer.eos_token_id
    results: list[list[Sample]] = []
    for i in range(len(prompts)):
        group = []
        for ids in new[i * n : (i + 1) * n]:
            if eos in ids:
                ids, reason = ids[: ids.index(eos) + 1], "stop"
            else:
                reason = "length"
            group.append(Sample(ids, tokenizer.decode(ids, skip_special_tokens=True), reason))
        results.append(group)
    return results
