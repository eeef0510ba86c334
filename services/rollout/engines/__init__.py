"""Generation engines behind one interface: `vllm` (production) and `hf` (transformers fallback)."""

from __future__ import annotations

import logging
from pathlib import Path

from .base import Engine, EngineError, GenRequest, GenSample

log = logging.getLogger(__name__)

ENGINES = ("auto", "vllm", "hf")


def make_engine(
    kind: str, model_dir: Path, *, device: str = "cpu", dtype: str = "auto", **vllm_options
) -> Engine:
    """Start the chosen engine on model_dir; `auto` tries vLLM and falls back to hf when it cannot run."""
    if kind not in ENGINES:
        raise EngineError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")
    if kind in ("auto", "vllm"):
        try:
            from .vllm_engine import VllmEngine

            return VllmEngine(model_dir, dtype=dtype, **vllm_options)
        except EngineError as exc:
            if kind == "vllm":
                raise
            log.warning("vLLM cannot run here; falling back to the hf engine", extra={"cause": str(exc)})
    from .hf_engine import HfEngine

    return HfEngine(model_dir, device=device, dtype=dtype)


__all__ = ["ENGINES", "Engine", "EngineError", "GenRequest", "GenSample", "make_engine"]
