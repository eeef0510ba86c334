"""Resolve a job's base model to a directory and load it with transformers."""

from __future__ import annotations

from pathlib import Path

import torch

from asympo.jobs.spec import GGUF_PREFIX, ArithmeticTaskSpec, JobSpec

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(spec: JobSpec, cache_dir: Path | None = None, progress: bool = True) -> str:
    """The base model's directory: the tiny factory's, an imported GGUF's (`gguf:SOURCE`), or model.path."""
    if spec.model.path == "tiny":
        from asympo.models.tiny import tiny_model_dir

        assert isinstance(spec.task, ArithmeticTaskSpec)  # JobSpec refuses tiny with a dataset task

        return str(tiny_model_dir(spec.model.tiny, spec.task, cache_dir, progress=progress))
    if spec.model.path.startswith(GGUF_PREFIX):
        from asympo.models.gguf_import import imported_dir

        return str(imported_dir(spec.model.path.removeprefix(GGUF_PREFIX), cache_dir, progress=progress))
    return spec.model.path


def pick_device(requested: str) -> torch.device:
    """cuda when asked for (or 'auto' and available), else cpu."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def load_policy(path: str, dtype: str = "auto", device: torch.device | str = "cpu"):
    """(model, tokenizer) for training: float32 weights unless a dtype is forced; pad token defaults to EOS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Master weights stay float32 for "auto": the optimizer needs them; low precision is for compute.
    torch_dtype = _DTYPES.get(dtype, torch.float32)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except OSError as exc:
        raise FileNotFoundError(f"cannot load model {path!r}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer
