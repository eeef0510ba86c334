"""What a generation engine is asked for and gives back, shared by the rollout engines and the reference loop."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GenRequest:
    """One prompt to expand into n completions."""

    prompt_token_ids: list[int]
    n: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: bool = False
    stop_token_ids: tuple[int, ...] = ()  # besides the model's own EOS

    @classmethod
    def from_sampling(
        cls, prompt_token_ids: list[int], n: int, sp, *, seed: int | None = None, logprobs: bool = False,
        default_max_new_tokens: int = 256, unset_temperature: float | None = None,
    ) -> GenRequest:  # fmt: skip
        """A request from a SamplingParams message, whose zero fields mean "not set".

        A top_p outside (0, 1] means no nucleus cut. temperature 0 means greedy unless `unset_temperature`
        is given (training tasks: 0 is an unset field there, not a request for greedy decoding).
        """
        temperature = sp.temperature
        if temperature <= 0 and unset_temperature is not None:
            temperature = unset_temperature
        return cls(
            prompt_token_ids=list(prompt_token_ids), n=max(1, n),
            max_new_tokens=sp.max_new_tokens or default_max_new_tokens, temperature=temperature,
            top_p=sp.top_p if 0 < sp.top_p <= 1 else 1.0, seed=seed, logprobs=logprobs,
            stop_token_ids=tuple(sp.stop_token_ids),
        )  # fmt: skip


@dataclass
class GenSample:
    """One completion: token ids (EOS included when it stopped), text, finish reason, optional log-probs."""

    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (EOS or a stop token) or "length" (max_new_tokens reached)
    logprobs: list[float] = field(default_factory=list)  # raw-policy log-prob of each token, when asked for
