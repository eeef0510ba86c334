"""Generation engines behind one interface: `vllm` (production) and `hf` (transformers fallback)."""

from __future__ import annotations

import logging
import time
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


def import_ahead(kind: str) -> float:
    """Import the engine's library now (seconds taken), so a job's first engine start does not pay for it."""
    # vLLM's import is seconds of a job's critical path on CPU; a pod waiting for its first job is idle.
    t0 = time.perf_counter()
    if kind in ("auto", "vllm"):
        try:
            # vLLM imports lazily: the engine class and the CPU worker are what a start would import.
            import importlib

            from vllm import LLM  # noqa: F401

            for module in (
                "vllm.v1.engine.core",
                "vllm.v1.worker.cpu_worker",
                "vllm.v1.worker.cpu_model_runner",
            ):
                importlib.import_module(module)
        except ImportError:
            pass  # make_engine says why when a job needs it
    import transformers  # noqa: F401

    return time.perf_counter() - t0


__all__ = ["ENGINES", "Engine", "EngineError", "GenRequest", "GenSample", "import_ahead", "make_engine"]
