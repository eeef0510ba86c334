"""The `hf` engine: transformers `generate`, for machines where no vLLM build runs."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_file

from asympo.algo import token_logprobs
from asympo.models.hf_generate import hf_generate_ids
from asympo.models.loading import load_policy
from asympo.models.prompts import stop_token_ids

from .base import EngineError, GenRequest, GenSample


class HfEngine:
    """Batches requests with equal sampling parameters into one `generate` call."""

    name = "hf"

    def __init__(self, model_dir: Path, device: str = "cpu", dtype: str = "auto"):
        self.model, self.tokenizer = load_policy(str(model_dir), dtype, device)
        self.model.eval()
        self.stop_token_ids = stop_token_ids(self.tokenizer, model_dir)
        self.dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")

    def generate(self, requests: list[GenRequest]) -> list[list[GenSample]]:
        """n samples per request; requests sharing sampling parameters are generated together."""
        batches: dict[tuple, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            batches[(r.n, r.max_new_tokens, r.temperature, r.top_p, r.logprobs, r.stop_token_ids)].append(i)
        out: list[list[GenSample]] = [[] for _ in requests]
        for (n, max_new, temperature, top_p, logprobs, stops), idx in batches.items():
            # One seed per batch: generate() has a single RNG stream, so per-request seeds cannot all hold.
            seed = requests[idx[0]].seed
            greedy = temperature == 0  # vLLM's convention: temperature 0 means greedy
            groups = hf_generate_ids(
                self.model, self.tokenizer, [requests[i].prompt_token_ids for i in idx], n=1 if greedy else n,
                max_new_tokens=max_new, temperature=temperature, top_p=top_p, seed=seed, logprobs=logprobs,
                greedy=greedy, stop_token_ids=sorted({*stops, *self.stop_token_ids}),
            )  # fmt: skip
            if greedy:
                groups = [group * n for group in groups]
            for i, group in zip(idx, groups):
                out[i] = group
        return out

    def load_weights(self, path: Path) -> None:
        """Load every safetensors shard of `path` into the model (strict: the architecture must match)."""
        shards = sorted(Path(path).glob("*.safetensors"))
        if not shards:
            raise EngineError(f"no safetensors files in {path}")
        state = {}
        for shard in shards:
            state.update(load_file(shard, device=str(next(self.model.parameters()).device)))
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise EngineError(f"weights in {path} do not fit the served model: {exc}") from exc

    @torch.no_grad()
    def sequence_logprobs(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[list[float]]:
        """Continuation log-probs from one forward pass per sequence."""
        device = next(self.model.parameters()).device
        out = []
        for ids, p in zip(sequences, prompt_lens):
            x = torch.tensor([ids], device=device)
            logits = self.model(input_ids=x).logits[0]
            out.append(token_logprobs(logits[p - 1 : -1], x[0, p:]).tolist())
        return out

    @torch.no_grad()
    def head_columns(self, dims: list[int]) -> list[list[float]]:
        """Columns `dims` of the output head's weight, [len(dims), vocab]."""
        return self.model.get_output_embeddings().weight[:, dims].T.float().tolist()

    def reset_prefix_cache(self) -> None:
        """Nothing to reset: generate() keeps no KV between calls."""

    def close(self) -> None:
        """Drop the model."""
        self.model = None
