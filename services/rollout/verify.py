"""Checking that an engine serves the weights of a version, before the pod reports it as served.

Two checks, both against files the learner wrote:
- **The head, exactly.** The engine's lm_head is applied to one-hot hidden states, which returns
  columns of the weight it really multiplies with (a product with a one-hot vector has no rounding).
  They must equal the version's own head tensor (the embedding, for tied models) cast to the served
  dtype, and must not sit closer to the previous version's columns than to the new ones. This does not
  depend on how far the learning rate moved the weights: a head that kept its old values is refused
  after any update, where a tolerance would let small drifts through until they add up.
- **The probes, approximately.** Log-probs of fixed token sequences served by the engine must match the
  learner's fingerprint within the rounding of the served dtype: the whole network (a wrong model, a
  silent down-cast, a layer left unloaded) shows there.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from asympo.weights.store import VersionManifest

from .engines import Engine
from .policy import LocalVersion, ReloadRefused

log = logging.getLogger(__name__)

HEAD_DIMS = 4
_HEAD_NAMES = ("lm_head.weight",)
_EMBED_NAMES = ("model.embed_tokens.weight", "transformer.wte.weight", "model.embed_in.weight")


def probe_mismatch(manifest: VersionManifest, served: list[list[float]]) -> float:
    """Largest |served − published| log-prob over the manifest's probe tokens (inf if any is not a number,
    or if the engine scored fewer or more probes or tokens than the manifest has)."""
    if len(served) != len(manifest.probes):
        return math.inf  # a probe the engine skipped must not count as a match
    worst = 0.0
    for probe, got in zip(manifest.probes, served):
        if len(got) != len(probe.logprobs):
            return math.inf
        for a, b in zip(got, probe.logprobs):
            diff = abs(a - b)
            if not diff <= worst:  # also true for NaN, which must never pass
                worst = diff if math.isfinite(diff) else math.inf
    return worst


def probe_tolerance(served_dtype: str) -> float:
    """How far served probe log-probs may be from the learner's float32 ones: rounding of the served dtype.

    Measured on the tiny model: float32 serving agrees to ~1e-6, bfloat16 serving differs by ~0.04; a
    stale lm_head was seen to differ by 0.68.
    """
    return 2e-3 if served_dtype in ("float32", "float64") else 0.1


def head_dims(sha256: str, hidden_size: int, count: int = HEAD_DIMS) -> list[int]:
    """Hidden dimensions whose head columns are compared, drawn from the version's digest."""
    return sorted(random.Random(sha256).sample(range(hidden_size), min(count, hidden_size)))


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / n for n in names]
    return sorted(path.glob("*.safetensors"))


def head_columns(path: Path, dims: list[int]) -> torch.Tensor | None:
    """Columns `dims` of the version's output head ([len(dims), vocab], float32); None if it has no known head."""
    config = json.loads((path / "config.json").read_text())
    tied = bool(config.get("tie_word_embeddings", False))
    wanted = _HEAD_NAMES + (_EMBED_NAMES if tied else ())
    for file in _weight_files(path):
        with safe_open(str(file), "pt") as f:
            for name in wanted:
                if name in f.keys():
                    return f.get_tensor(name)[:, dims].T.float()
    return None


@dataclass
class HeadCheck:
    """How the served head compared with the new and the previous version."""

    to_new: float
    to_previous: float | None
    scale: float


def check_head(engine: Engine, local: LocalVersion, previous: LocalVersion | None) -> HeadCheck | None:
    """Compare the engine's head with the version's; ReloadRefused if it is not the new head (blocking)."""
    config = json.loads((local.path / "config.json").read_text())
    hidden = config.get("hidden_size")
    if not isinstance(hidden, int):
        return None
    dims = head_dims(local.sha256, hidden)
    expected = head_columns(local.path, dims)
    served = engine.head_columns(dims)
    if expected is None or served is None:
        log.warning("head check skipped: this model or engine does not expose its output head")
        return None
    served = torch.as_tensor(served, dtype=torch.float32)
    dtype = getattr(torch, engine.dtype, torch.float32)
    expected = expected.to(dtype).float()  # what the engine holds after casting the checkpoint
    if served.shape != expected.shape:
        raise ReloadRefused(
            "head", f"version {local.version}: served head has shape {tuple(served.shape)}, expected "
            f"{tuple(expected.shape)}"
        )  # fmt: skip
    scale = float(expected.abs().max()) or 1.0
    check = HeadCheck(float(torch.linalg.vector_norm(served - expected)), None, scale)
    # One-hot products are exact; the slack only covers kernels that round fp32 inputs (e.g. TF32).
    tolerance = (2e-3 if dtype == torch.float32 else 1e-2) * scale
    worst = float((served - expected).abs().max())
    if not worst <= tolerance:
        raise ReloadRefused(
            "head", f"version {local.version}: the served lm_head differs from the version's by {worst:.3e} "
            f"> {tolerance:.1e} (a stale or wrong head would be served)",
        )  # fmt: skip
    if previous is not None:
        before = _previous_head(previous, dims)
        if before is not None and before.shape == expected.shape:
            check.to_previous = float(torch.linalg.vector_norm(served - before.to(dtype).float()))
            if check.to_previous < check.to_new:
                raise ReloadRefused(
                    "head", f"version {local.version}: the served lm_head is closer to version "
                    f"{previous.version}'s ({check.to_previous:.3e}) than to the new one's ({check.to_new:.3e}): "
                    "the head was not reloaded",
                )  # fmt: skip
    return check


def _previous_head(previous: LocalVersion, dims: list[int]) -> torch.Tensor | None:
    # The learner may have garbage-collected the previous version meanwhile: the exact comparison with
    # the new head above already holds, so its absence must not refuse a good version.
    try:
        return head_columns(previous.path, dims)
    except OSError as exc:
        log.warning(
            "head check: the previous version's files are gone; compared with the new head only",
            extra={"version": previous.version, "cause": str(exc)},
        )
        return None


def check_probes(engine: Engine, local: LocalVersion, tolerance: float | None = None) -> float:
    """Served probe log-probs against the learner's fingerprint; ReloadRefused past the tolerance (blocking)."""
    probes = local.manifest.probes
    if not probes:
        return 0.0
    served = engine.sequence_logprobs([p.token_ids for p in probes], [p.prompt_len for p in probes])
    worst = probe_mismatch(local.manifest, served)
    tolerance = tolerance or probe_tolerance(engine.dtype)
    if not worst <= tolerance:
        raise ReloadRefused(
            "probe",
            f"version {local.version}: served probe log-probs differ from the published fingerprint by "
            f"{worst:.2e} > {tolerance:.1e} (stale weights would be served)",
        )
    return worst


def check_served(
    engine: Engine, local: LocalVersion, previous: LocalVersion | None, probe_tol: float | None = None
) -> dict:
    """Both checks; returns what they measured, for the log (blocking: run it in a thread)."""
    head = check_head(engine, local, previous)
    worst = check_probes(engine, local, probe_tol)
    return {
        "probe_max_abs_diff": worst,
        "head_to_new": head.to_new if head else None,
        "head_to_previous": head.to_previous if head else None,
    }
