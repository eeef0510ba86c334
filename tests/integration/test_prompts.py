"""Chat-formatted prompts and stop tokens with a real instruction-tuned tokenizer (SmolLM2-135M-Instruct)."""

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from asympo.jobs.spec import ArithmeticTaskSpec, DatasetTaskSpec
from asympo.models.hf_generate import hf_generate_ids
from asympo.models.prompts import Prompter, PromptError
from asympo.tasks import build_task

pytestmark = pytest.mark.slow

HEADER = "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    return AutoTokenizer.from_pretrained(smollm2_path)


def test_chat_prompts_are_user_turns_of_the_template(tokenizer, smollm2_path):
    task = ArithmeticTaskSpec(template="What is {a} + {b}?", digits=1, heldout_size=10, chat_template=True)
    problem = build_task(task).heldout()[0]
    ids = Prompter.for_model(tokenizer, smollm2_path, task).ids(problem.prompt)
    text = tokenizer.decode(ids)
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": problem.prompt}], add_generation_prompt=True, tokenize=False
    )
    assert text == expected and text.endswith(HEADER)
    assert "SmolLM" in text  # the template's own system prompt, kept when the spec sets none
    assert text.count("<|im_start|>") == 3  # system, user, assistant: no special token added twice
    assert f"<|im_start|>user\n{problem.prompt}<|im_end|>" in text

    own = task.model_copy(update={"system_prompt": "Answer with the number only."})
    text = tokenizer.decode(Prompter(tokenizer, own).ids(problem.prompt))
    assert "<|im_start|>system\nAnswer with the number only.<|im_end|>" in text and "SmolLM" not in text

    plain = task.model_copy(update={"chat_template": False})
    assert Prompter(tokenizer, plain).ids(problem.prompt) == tokenizer(problem.prompt).input_ids


def test_stop_tokens_end_a_turn(tokenizer, smollm2_path):
    prompter = Prompter.for_model(
        tokenizer,
        smollm2_path,
        ArithmeticTaskSpec(template="What is {a} + {b}?", digits=1, heldout_size=10, chat_template=True),
    )
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in prompter.stop_ids
    model = AutoModelForCausalLM.from_pretrained(smollm2_path).eval()
    (group,) = hf_generate_ids(
        model, tokenizer, [prompter.ids("What is 2 + 3?")], max_new_tokens=32, greedy=True,
        stop_token_ids=prompter.stop_ids,
    )  # fmt: skip
    sample = group[0]
    assert (
        sample.finish_reason == "stop" and sample.token_ids[-1] == im_end
    )  # kept: the policy learns to stop
    assert im_end not in sample.token_ids[:-1] and "<|im_end|>" not in sample.text and "5" in sample.text


def test_a_model_without_a_chat_template_is_refused_clearly(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    task = DatasetTaskSpec(path="x.jsonl", chat_template=True)
    with pytest.raises(PromptError, match="no chat template"):
        Prompter(tokenizer, task).ids("1+1=")
