"""The tiny-model factory: HF-format output that transformers and vLLM load, warm-started, cached."""

import json
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from asympo.models.evaluate import greedy_accuracy
from asympo.models.hf_generate import hf_generate
from asympo.models.prompts import Prompter
from asympo.models.tiny import MANIFEST, tiny_model_dir
from asympo.tasks import build_task

pytestmark = pytest.mark.slow


def test_saved_in_hf_format_with_untied_embeddings(tiny_model_path):
    files = {p.name for p in tiny_model_path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", MANIFEST} <= files
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    assert model.config.model_type == "qwen2" and not model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert 3e5 < sum(p.numel() for p in model.parameters()) < 1e6


def test_character_tokenizer_round_trips(tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    ids = tok("47+85=132").input_ids
    assert len(ids) == len("47+85=132") and tok.unk_token_id not in ids
    assert tok.decode(ids) == "47+85=132"
    assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == "47+85=132"


def test_warm_start_reaches_about_the_target_on_heldout(tiny_model_path, example_spec):
    manifest = json.loads((tiny_model_path / MANIFEST).read_text())
    target = example_spec.model.tiny.sft_target_accuracy
    assert manifest["reached_target"] and manifest["sft_accuracy"] >= target
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    acc = greedy_accuracy(model, Prompter(tok), build_task(example_spec.task).heldout(), max_new_tokens=6)
    # "About" the target: the held-out set is not the SFT validation set, and accuracy jumps as SFT learns carries.
    assert target - 0.15 <= acc <= target + 0.2, acc


def test_cache_hit_returns_the_same_directory_without_training(tiny_model_path, tiny_cache, example_spec):
    stamp = (tiny_model_path / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    again = tiny_model_dir(example_spec.model.tiny, example_spec.task, tiny_cache, progress=False)
    assert again == tiny_model_path and time.perf_counter() - t0 < 1.0
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in tiny_cache.iterdir() if p.name.startswith(".build-")]


def test_sampling_is_seeded_and_greedy_is_deterministic(tiny_model_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    prompts = ["12+34=", "56+78="]
    a = hf_generate(model, tok, prompts, n=8, max_new_tokens=6, seed=7)
    b = hf_generate(model, tok, prompts, n=8, max_new_tokens=6, seed=7)
    assert [[s.token_ids for s in g] for g in a] == [[s.token_ids for s in g] for g in b]
    assert len(a) == 2 and all(len(g) == 8 for g in a)
    for g in a:
        for s in g:
            assert s.finish_reason in ("stop", "length")
            assert (s.token_ids[-1] == tok.eos_token_id) == (s.finish_reason == "stop")
    before = torch.get_rng_state()
    hf_generate(model, tok, prompts, max_new_tokens=6, greedy=True)
    assert torch.equal(before, torch.get_rng_state())
