"""token_logprobs: exact float32 log-probs, for bf16 logits too, without a full float32 logits copy."""

import pytest
import torch

from asympo.algo import token_logprobs


def _reference(logits, tokens):
    return torch.log_softmax(logits.double(), dim=-1).gather(-1, tokens[..., None])[..., 0]


def _batch(dtype, shape=(3, 7), V=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (4 * torch.randn(*shape, V, generator=g)).to(dtype).requires_grad_(True)
    tokens = torch.randint(0, V, shape, generator=g)
    return logits, tokens


def test_float32_values_and_gradients_match_log_softmax():
    logits, tokens = _batch(torch.float32)
    out = token_logprobs(logits, tokens)
    assert out.dtype == torch.float32 and out.shape == tokens.shape
    torch.testing.assert_close(out.double(), _reference(logits, tokens), atol=1e-5, rtol=0)
    w = torch.randn(tokens.shape)
    (g,) = torch.autograd.grad((out * w).sum(), logits)
    ref = logits.detach().double().requires_grad_(True)
    (g_ref,) = torch.autograd.grad((_reference(ref, tokens) * w.double()).sum(), ref)
    torch.testing.assert_close(g.double(), g_ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk_rows", [1, 4, 2048])
@pytest.mark.parametrize("sliced", [False, True])
def test_bf16_logits_give_float32_logprobs_and_right_gradients(chunk_rows, sliced):
    full, tokens = _batch(torch.bfloat16, shape=(5, 4), V=1000)
    # The causal-LM use: logits[:, :-1] is a non-contiguous view scoring tokens[:, 1:].
    logits, tokens = (full[:, :-1], tokens[:, 1:]) if sliced else (full, tokens)
    out = token_logprobs(logits, tokens, chunk_rows=chunk_rows)
    assert out.dtype == torch.float32
    # Exact against the bf16 values upcast: no precision lost beyond the input's own.
    torch.testing.assert_close(out.double(), _reference(logits, tokens), atol=1e-5, rtol=0)
    w = torch.randn(tokens.shape)
    (g,) = torch.autograd.grad((out * w).sum(), logits)
    assert g.dtype == torch.bfloat16 and g.shape == logits.shape
    ref = logits.detach().double().requires_grad_(True)
    (g_ref,) = torch.autograd.grad((_reference(ref, tokens) * w.double()).sum(), ref)
    torch.testing.assert_close(g.double(), g_ref, atol=2e-2, rtol=2e-2)


def test_bf16_path_saves_no_float32_copy_of_the_logits():
    full, tokens = _batch(torch.bfloat16, shape=(64, 9), V=512)
    logits, tokens = full[:, :-1], tokens[:, 1:]
    saved = []

    def pack(t):
        saved.append((t.dtype, t.numel()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = token_logprobs(logits, tokens, chunk_rows=16)
    assert saved, "expected the autograd graph to save the inputs"
    assert all(not (dtype == torch.float32 and n >= logits.numel()) for dtype, n in saved), saved
    out.sum().backward()
    assert full.grad is not None and torch.isfinite(full.grad.float()).all()
    assert torch.all(full.grad[:, -1] == 0)


def test_single_position_and_float32_views():
    logits, tokens = _batch(torch.float32, shape=(2, 5), V=30)
    torch.testing.assert_close(
        token_logprobs(logits[:, :-1], tokens[:, 1:]).double(), _reference(logits[:, :-1], tokens[:, 1:])
    )
    bf = logits.detach().bfloat16()
    torch.testing.assert_close(
        token_logprobs(bf[0, 0], tokens[0, 0]).double(), _reference(bf[0, 0], tokens[0, 0])
    )


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="disagree"):
        token_logprobs(torch.zeros(2, 5, 10), torch.zeros(2, 4, dtype=torch.long))
