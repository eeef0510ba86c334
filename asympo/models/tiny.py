"""The tiny CPU model: a character tokenizer and a small Qwen2 causal LM warm-started on the task.

RL needs reward variance from the first step, so the factory trains the fresh model with answer-only
SFT under a one-cycle schedule and stops as soon as greedy accuracy reaches the chosen target. The
result is saved in HF format (safetensors; embeddings untied unless the spec ties them, which is how
the tied heads of real LLMs are tested on CPU) and cached by a hash of everything that determines it.

`asympo models build-tiny [JOB.yaml] [--out DIR]` builds one by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from asympo.jobs.spec import TINY_ALPHABET, ArithmeticTaskSpec, TinyModelSpec
from asympo.models.evaluate import greedy_accuracy
from asympo.models.prompts import Prompter
from asympo.tasks import ArithmeticTask
from asympo.tasks.base import Problem

# Bump when the factory changes what it builds, so caches of older builds are not reused.
FACTORY_VERSION = 1
SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
ALPHABET = TINY_ALPHABET
MANIFEST = "asympo_tiny.json"
SFT_VAL_SIZE = 300


def default_cache_dir() -> Path:
    """$ASYMPO_CACHE_DIR/models, else ~/.cache/asympo/models."""
    root = os.environ.get("ASYMPO_CACHE_DIR") or Path.home() / ".cache" / "asympo"
    return Path(root) / "models"


def build_tokenizer():
    """A character-level fast tokenizer (one token per character) that AutoTokenizer and vLLM load."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *ALPHABET))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>", model_max_length=256
    )


def build_model(spec: TinyModelSpec, tokenizer):
    """A freshly initialized Qwen2ForCausalLM of the spec's size, float32."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=spec.tie_embeddings,
        rope_theta=10000.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        dtype="float32",
    )
    torch.manual_seed(spec.seed)
    return Qwen2ForCausalLM(config)


def cache_key(spec: TinyModelSpec, task_spec: ArithmeticTaskSpec) -> str:
    """Hash of what determines the built model: factory version, model spec, task spec, torch version."""
    blob = json.dumps(
        {
            "factory": FACTORY_VERSION,
            "model": spec.model_dump(mode="json"),
            "task": task_spec.model_dump(mode="json"),
            "torch": torch.__version__.split("+")[0],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _sft_batch(tokenizer, problems: list[Problem]):
    """Right-padded prompt+answer+EOS rows with labels on the answer and EOS only."""
    rows, labels = [], []
    for p in problems:
        prompt = tokenizer(p.prompt, add_special_tokens=False).input_ids
        answer = tokenizer(p.reference, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        rows.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    L = max(map(len, rows))
    ids = torch.full((len(rows), L), tokenizer.pad_token_id)
    lab = torch.full((len(rows), L), -100)
    att = torch.zeros((len(rows), L), dtype=torch.long)
    for i, (r, lb) in enumerate(zip(rows, labels)):
        ids[i, : len(r)], lab[i, : len(r)], att[i, : len(r)] = torch.tensor(r), torch.tensor(lb), 1
    return ids, att, lab


def warm_start(model, tokenizer, task: ArithmeticTask, spec: TinyModelSpec, progress: bool = True) -> dict:
    """Answer-only SFT with a one-cycle schedule, stopped at the first evaluation reaching the target."""
    stream = task.train_stream(seed=spec.seed + 1_000_003)
    val_rng = random.Random(f"sft-val:{spec.seed}")
    val = [next(stream) for _ in range(SFT_VAL_SIZE * 4)]
    val = val_rng.sample(val, SFT_VAL_SIZE)
    max_new = task.max_answer_chars() + 1
    opt = torch.optim.AdamW(model.parameters(), lr=spec.sft_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.sft_lr, total_steps=spec.sft_max_steps)
    model.train()
    accuracy, step, t0 = 0.0, 0, time.perf_counter()
    bar = tqdm(
        total=spec.sft_max_steps, desc="tiny-model SFT", unit="step", disable=not progress, leave=False
    )
    for step in range(1, spec.sft_max_steps + 1):
        ids, att, lab = _sft_batch(tokenizer, [next(stream) for _ in range(spec.sft_batch_size)])
        loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.update(1)
        if step % spec.sft_eval_every == 0 or step == spec.sft_max_steps:
            accuracy = greedy_accuracy(model, Prompter(tokenizer), val, max_new)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{accuracy:.2f}")
            if accuracy >= spec.sft_target_accuracy:
                break
    bar.close()
    model.eval()
    return {
        "sft_steps": step,
        "sft_accuracy": accuracy,
        "sft_target_accuracy": spec.sft_target_accuracy,
        "sft_seconds": round(time.perf_counter() - t0, 2),
        "reached_target": accuracy >= spec.sft_target_accuracy,
    }


def tiny_model_dir(
    spec: TinyModelSpec,
    task_spec: ArithmeticTaskSpec,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> Path:
    """Directory of the warm-started tiny model for this spec and task, building it on a cache miss."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache_dir / f"tiny-{cache_key(spec, task_spec)}"
    if (target / MANIFEST).is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    task = ArithmeticTask(task_spec)
    tokenizer = build_tokenizer()
    model = build_model(spec, tokenizer)
    report = warm_start(model, tokenizer, task, spec, progress=progress)
    if not report["reached_target"]:
        print(
            f"warning: tiny model reached {report['sft_accuracy']:.0%} greedy accuracy after "
            f"{report['sft_steps']} SFT steps, short of the {spec.sft_target_accuracy:.0%} target",
            file=sys.stderr,
        )
    # Build beside the target and rename: a concurrent builder or a crash never leaves a half model.
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_dir))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        manifest = {
            "factory_version": FACTORY_VERSION,
            "parameters": sum(p.numel() for p in model.parameters()),
            "model": spec.model_dump(mode="json"),
            "task": task_spec.model_dump(mode="json"),
            **report,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        try:
            tmp.rename(target)
        except OSError:
            if not (target / MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
