"""A synthetic model for the weight-path benchmarks: random bf16 weights in Qwen3-1.7B's shapes, built
from a config (nothing downloaded)."""

from __future__ import annotations

import torch

# Qwen3-1.7B (bf16, tied): 28 layers of these widths make the 3.4 GB version of the paper's job.
QWEN3_1_7B = dict(hidden_size=2048, intermediate_size=6144, num_attention_heads=16, num_key_value_heads=8,
                  head_dim=128, vocab_size=151936)  # fmt: skip


def qwen3_shapes(gb: float) -> dict:
    """Qwen3-1.7B's widths with the layers that make ~`gb` GB of bf16; narrower (same proportions) if small."""
    shape = dict(QWEN3_1_7B)
    scale = 1.0 if gb >= 0.75 else (gb / 3.44) ** (1 / 3)  # full widths need 0.62 GB of embeddings
    if scale < 1.0:
        hidden = max(128, round(2048 * scale / 128) * 128)
        shape.update(hidden_size=hidden, intermediate_size=3 * hidden, num_attention_heads=hidden // 128,
                     num_key_value_heads=max(1, hidden // 256), vocab_size=max(4096, int(151936 * scale)))  # fmt: skip
    h, i, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    layer = 2 * h * h + 2 * h * kv + 3 * h * i + 4 * shape["head_dim"] + 2 * h  # attention, MLP, norms
    shape["num_hidden_layers"] = max(1, round((gb * 1e9 / 2 - v * h) / layer))
    return shape


def synthetic_model(gb: float):
    """A randomly initialized bf16 Qwen3ForCausalLM of ~`gb` GB with tied embeddings, built from a config."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(**qwen3_shapes(gb), tie_word_embeddings=True, max_position_embeddings=4096)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = Qwen3ForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    return model.eval(), config
