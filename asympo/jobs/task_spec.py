"""The `task` section of a job spec: generated arithmetic or a dataset file, with its prompt options."""

from __future__ import annotations

import string
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from asympo.jobs.spec_errors import Seed, _Strict

TINY_ALPHABET = "0123456789+-*= "


def _template_fields(template: str) -> set[str]:
    """The record fields a template names; only plain `{name}` references are allowed."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"template is not a valid format string: {exc}") from None
    names = set()
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        # A format spec ({q:>2000000000}) can allocate gigabytes, and attribute or index access
        # ({q.__class__}, {q[0]}) reaches past the record: a template only names fields.
        if spec or conversion or not name.isidentifier():
            shown = (
                "{"
                + name[:40]
                + ("!" + conversion if conversion else "")
                + (":" + spec[:20] if spec else "")
                + "}"
            )
            raise ValueError(
                f"template may only reference fields as {{name}}, without format specs, conversions, "
                f"attributes or indexes; got {shown}"
            )
        names.add(name)
    return names


class _PromptOptions(_Strict):
    """How a task's prompt text reaches the model: as is, or as a user turn of its chat template."""

    chat_template: bool = Field(
        False, description="render each prompt as a user turn of the model's chat template"
    )
    system_prompt: str | None = Field(
        None,
        max_length=4096,
        description="system turn (with chat_template); unset keeps the template's default",
    )

    @model_validator(mode="after")
    def _system_needs_chat(self):
        if self.system_prompt is not None and not self.chat_template:
            raise ValueError("system_prompt needs chat_template: true")
        return self


class ArithmeticTaskSpec(_PromptOptions):
    """Seeded synthetic arithmetic: operands of exactly `digits` digits, answers checked by exact match."""

    kind: Literal["arithmetic"] = "arithmetic"
    template: str = Field(
        "{a}{op}{b}=", max_length=1024, description="the prompt, over the fields {a}, {op} and {b}"
    )
    digits: int = Field(2, ge=1, le=9)
    operators: list[Literal["+", "-", "*"]] = Field(default_factory=lambda: ["+"], min_length=1)
    heldout_size: int = Field(200, ge=1, le=100_000, description="fixed held-out problems, never trained on")
    seed: Seed = Field(0, description="seed of the held-out set; the job seed drives training order")

    @field_validator("template")
    @classmethod
    def _known_fields(cls, template: str) -> str:
        fields = _template_fields(template)
        if not {"a", "b"} <= fields or not fields <= {"a", "op", "b"}:
            raise ValueError(
                f"template must use {{a}} and {{b}} (and may use {{op}}), got fields {sorted(fields)}"
            )
        return template

    @field_validator("operators")
    @classmethod
    def _unique(cls, ops: list[str]) -> list[str]:
        if len(set(ops)) != len(ops):
            raise ValueError(f"operators must not repeat, got {ops}")
        return ops

    @model_validator(mode="after")
    def _enough_problems(self) -> ArithmeticTaskSpec:
        lo = 0 if self.digits == 1 else 10 ** (self.digits - 1)
        space = (10**self.digits - lo) ** 2 * len(self.operators)
        if self.heldout_size > space // 2:
            raise ValueError(
                f"heldout_size ({self.heldout_size}) must leave most of the {space} problems for training"
            )
        return self


class DatasetTaskSpec(_PromptOptions):
    """Prompts and reference answers from a JSONL / Parquet file or a Hugging Face dataset name."""

    kind: Literal["dataset"] = "dataset"
    path: str = Field(
        min_length=1,
        max_length=4096,
        description=".jsonl/.json/.parquet file, or a Hugging Face dataset name",
    )
    split: str = Field("train", min_length=1, max_length=256)
    subset: str | None = Field(None, max_length=256, description="Hugging Face dataset configuration name")
    prompt_field: str = Field("question", min_length=1, max_length=256)
    answer_field: str = Field("answer", min_length=1, max_length=256)
    id_field: str | None = Field(None, min_length=1, max_length=256)
    template: str = Field(
        "{question}", max_length=4096, description="Python format string over the record's fields"
    )
    heldout_path: str | None = Field(
        None, max_length=4096, description="held-out file or split; else split off the training data"
    )
    heldout_split: str | None = Field(None, max_length=256)
    heldout_size: int = Field(200, ge=1, le=100_000)
    limit: int | None = Field(None, ge=1, le=100_000_000, description="use only the first `limit` records")

    @field_validator("template")
    @classmethod
    def _has_field(cls, template: str) -> str:
        if not _template_fields(template):
            raise ValueError("template must reference at least one record field, e.g. '{question}'")
        return template


TaskSpec = Annotated[ArithmeticTaskSpec | DatasetTaskSpec, Field(discriminator="kind")]
