"""Packing (prompt, response) rows: the batched, padded log-probs equal each sequence scored alone."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from asympo.algo import token_logprobs
from asympo.models.response_logprobs import pack_responses, response_logprobs


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=20, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip
    return Qwen2ForCausalLM(config).eval()


def test_batched_padded_logprobs_match_unpadded_single_sequences(model):
    prompts = [[3, 4, 5], [6], [7, 8, 9, 10, 11]]
    responses = [[12, 13, 1], [14, 15, 16, 17, 18, 1], [19]]
    input_ids, attention, mask = pack_responses(prompts, responses, pad_id=0)
    assert mask.sum(1).tolist() == [3, 6, 1]
    with torch.no_grad():
        lp = response_logprobs(model, input_ids, attention)
        for i, (p, r) in enumerate(zip(prompts, responses)):
            seq = torch.tensor([p + r])
            logits = model(input_ids=seq).logits[0, len(p) - 1 : len(p) + len(r) - 1]
            alone = token_logprobs(logits, torch.tensor(r))
            torch.testing.assert_close(lp[i][mask[i].bool()], alone, atol=1e-5, rtol=1e-5)


def test_pack_refuses_mismatched_and_empty_prompts():
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        pack_responses([[1], [2]], [[3]], pad_id=0)
    with pytest.raises(ValueError, match="empty prompt"):
        pack_responses([[]], [[3]], pad_id=0)
