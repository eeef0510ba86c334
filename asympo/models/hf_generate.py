"""Sampling and greedy decoding with transformers' `generate`, returning token ids cut at EOS."""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from asympo.models.generation import GenSample


def hf_generate(model, tokenizer, prompts: list[str], **kwargs) -> list[list[GenSample]]:
    """n samples (or one greedy continuation) for each prompt string; see hf_generate_ids."""
    ids = [tokenizer(p).input_ids for p in prompts]
    return hf_generate_ids(model, tokenizer, ids, **kwargs)


@torch.no_grad()
def hf_generate_ids(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    *,
    n: int = 1,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    seed: int | None = None,
    logprobs: bool = False,
    stop_token_ids: list[int] | None = None,
) -> list[list[GenSample]]:
    """n samples (or one greedy continuation) per prompt; plain temperature/top-p sampling, no top-k.

    With logprobs=True each sample carries the log-prob of its tokens under the unwarped policy
    (temperature 1, no top-p), which is what behavior-corrected losses compare against. Generation ends
    at the first of `stop_token_ids` (default: the tokenizer's EOS), which stays in the sample.
    """
    if greedy and n != 1:
        raise ValueError("greedy decoding gives one continuation per prompt; use n=1")
    if not prompt_ids or any(not p for p in prompt_ids):
        raise ValueError("every prompt needs at least one token")
    device = next(model.parameters()).device
    stops = list(stop_token_ids or [tokenizer.eos_token_id])
    L = max(map(len, prompt_ids))
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(prompt_ids), L), pad, dtype=torch.long)
    attention = torch.zeros((len(prompt_ids), L), dtype=torch.long)
    for i, p in enumerate(prompt_ids):  # left padding: every row's last prompt token is at L - 1
        input_ids[i, L - len(p) :] = torch.tensor(p)
        attention[i, L - len(p) :] = 1
    config = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else temperature,
        top_p=None if greedy else top_p,
        top_k=None if greedy else 0,
        max_new_tokens=max_new_tokens,
        num_return_sequences=n,
        pad_token_id=pad,
        eos_token_id=stops,
        return_dict_in_generate=True,
        output_logits=logprobs,
    )
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config
        )
    new = out.sequences[:, L:]
    token_lp = None
    if logprobs:
        raw = torch.stack(out.logits, dim=1).float()  # [rows, steps, V], before any warper
        token_lp = torch.log_softmax(raw, dim=-1).gather(-1, new[..., None])[..., 0].tolist()
    new = new.tolist()
    results: list[list[GenSample]] = []
    for i in range(len(prompt_ids)):
        group = []
        for row in range(i * n, (i + 1) * n):
            ids = new[row]
            end = next((j for j, t in enumerate(ids) if t in stops), None)
            if end is not None:
                ids, reason = ids[: end + 1], "stop"
            else:
                reason = "length"
            lp = token_lp[row][: len(ids)] if token_lp is not None else []
            group.append(GenSample(ids, tokenizer.decode(ids, skip_special_tokens=True), reason, lp))
        results.append(group)
    return results
