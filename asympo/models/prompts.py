"""Prompt token ids and stop tokens: the one place where a task's text becomes what the model sees.

The dispatcher, the learner's evaluation and the reference loop all tokenize here, so the token ids a
rollout pod generates from are exactly the ones the learner trains on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from asympo.jobs.spec import ArithmeticTaskSpec, DatasetTaskSpec


class PromptError(ValueError):
    """A prompt that cannot be rendered for this model (e.g. a chat template it does not have)."""


def render_chat(tokenizer, text: str, system_prompt: str | None = None) -> str:
    """`text` as a user turn of the model's chat template, ending with the assistant's opening."""
    if not getattr(tokenizer, "chat_template", None):
        raise PromptError(
            "task.chat_template is on, but this model's tokenizer has no chat template; "
            "turn it off or use an instruction-tuned model"
        )
    messages = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    messages.append({"role": "user", "content": text})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prompt_token_ids(tokenizer, text: str, task: ArithmeticTaskSpec | DatasetTaskSpec) -> list[int]:
    """The token ids of a problem's prompt as the task renders it (plain, or through the chat template)."""
    if not task.chat_template:
        return tokenizer(text).input_ids
    # The rendered template already holds the special tokens (BOS, turn markers): add none twice.
    return tokenizer(render_chat(tokenizer, text, task.system_prompt), add_special_tokens=False).input_ids


def stop_token_ids(tokenizer, model_dir: str | Path | None = None) -> list[int]:
    """Tokens that end a response: the tokenizer's EOS and every EOS of the model's generation config.

    Instruction-tuned models end a turn with a token (e.g. `<|im_end|>`, `<|eot_id|>`) that their
    generation config lists beside the plain EOS; generation must stop at any of them.
    """
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if model_dir is not None:
        from transformers import GenerationConfig

        try:
            eos = GenerationConfig.from_pretrained(str(model_dir)).eos_token_id
        except OSError:  # no generation_config.json: the tokenizer's EOS is all there is
            eos = None
        ids += [eos] if isinstance(eos, int) else list(eos or [])
    return sorted(set(ids))


@dataclass
class Prompter:
    """A job's way from problem text to prompt token ids, and the tokens its responses end with."""

    tokenizer: object
    task: ArithmeticTaskSpec | DatasetTaskSpec | None = None
    stop_ids: list[int] = field(default_factory=list)

    @classmethod
    def for_model(cls, tokenizer, model_dir: str | Path, task=None) -> Prompter:
        """The prompter of a model directory (its generation config's EOS ids) and a task spec."""
        return cls(tokenizer, task, stop_token_ids(tokenizer, model_dir))

    def ids(self, text: str) -> list[int]:
        """Prompt token ids of a problem's text."""
        if self.task is None:
            return self.tokenizer(text).input_ids
        return prompt_token_ids(self.tokenizer, text, self.task)
