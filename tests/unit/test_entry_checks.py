"""What a rollout pod refuses before its engine sees it: tasks, evaluation tasks, control events."""

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asympo.jobs.records import JobRecord
from asympo.proto.v1 import bus_pb2
from services.rollout.entry_checks import ModelLimits, control_problem, eval_task_problem, task_problem
from tests.support.stream_fuzz import messages

LIMITS = ModelLimits(vocab=100, positions=64)


@pytest.fixture(scope="module")
def job(example_spec):
    return JobRecord(job_id="J", spec=example_spec, state="running")


def good_task(**kw):
    sampling = bus_pb2.SamplingParams(max_new_tokens=6, temperature=1.0, seed=3, stop_token_ids=[2])
    fields = {"job_id": "J", "prompt_id": "p", "prompt": "1+1=", "prompt_token_ids": [5, 6, 7], "group_size": 8,
              "sampling": sampling, "verifier": "exact"}  # fmt: skip
    return bus_pb2.PromptTask(**{**fields, **kw})


@pytest.mark.parametrize(
    "change, problem",
    [
        ({}, None),
        ({"group_size": 0}, "group_size 0 outside 1..1024"),
        ({"group_size": 1025}, "group_size 1025 outside 1..1024"),
        ({"prompt_token_ids": [5, 100]}, "token id 100 outside the vocabulary"),
        ({"prompt_token_ids": [-1, 5]}, "token id -1 outside the vocabulary"),
        ({"prompt_token_ids": [1] * 64}, "has 64 tokens; the model takes fewer than 64"),
        ({"sampling": bus_pb2.SamplingParams(temperature=math.nan)}, "temperature nan outside"),
        ({"sampling": bus_pb2.SamplingParams(temperature=-1)}, "temperature -1.0 outside"),
        ({"sampling": bus_pb2.SamplingParams(max_new_tokens=-3)}, "negative max_new_tokens -3"),
        ({"sampling": bus_pb2.SamplingParams(seed=-3)}, "negative seed -3"),
        ({"sampling": bus_pb2.SamplingParams(stop_token_ids=[1000])}, "a stop token id outside"),
        ({"verifier": "math"}, "verifier 'math' is not the job's ('exact')"),
        ({"prompt": "", "prompt_token_ids": []}, "neither prompt nor prompt_token_ids"),
    ],
)
def test_prompt_tasks_the_engine_would_trip_on_are_refused(job, change, problem):
    task = good_task(**change)
    found = task_problem(task, list(task.prompt_token_ids), LIMITS, job)
    assert (found is None) if problem is None else (problem in found), found


def test_eval_tasks_are_held_to_the_job_and_the_model(job):
    prompt = bus_pb2.EvalPrompt(prompt_id="h", prompt_token_ids=[5, 6], reference="2")
    good = bus_pb2.EvalTask(job_id="J", eval_id="v1-0", version=1, prompts=[prompt], chunks=7, verifier="exact",
                            greedy=bus_pb2.SamplingParams(max_new_tokens=6))  # fmt: skip
    assert eval_task_problem(good, LIMITS, job) is None
    for change, problem in [
        ({"prompts": []}, "0 prompts; an evaluation task has 1..32"),
        ({"prompts": [prompt] * 33}, "33 prompts"),
        ({"samples": 10**9}, "samples 1000000000 outside 0..64"),
        ({"samples": 4}, "samples 4 is not the job's (0)"),
        ({"version": -1}, "version -1"),
        ({"eval_id": ""}, "eval_id ''"),
        (
            {"prompts": [bus_pb2.EvalPrompt(prompt_token_ids=[7, 2**31 - 1])]},
            "prompt 0 has token id 2147483647",
        ),
        ({"greedy": bus_pb2.SamplingParams(temperature=math.inf)}, "greedy: temperature inf"),
        ({"verifier": "format:boxed:exact"}, "is not the job's"),
    ]:
        task = bus_pb2.EvalTask()
        task.CopyFrom(good)
        for name, value in change.items():
            task.ClearField(name)
            if isinstance(value, list):
                getattr(task, name).extend(value)
            elif isinstance(value, bus_pb2.SamplingParams):
                getattr(task, name).CopyFrom(value)
            else:
                setattr(task, name, value)
        assert problem in (eval_task_problem(task, LIMITS, job) or ""), change


def test_control_events_of_unknown_kinds_and_unconfirmed_cancels_are_refused(job):
    def event(kind, key="", value=""):
        return bus_pb2.ControlEvent(job_id="J", kind=kind, key=key, value=value)

    assert control_problem(event("pause"), job) is None and control_problem(event("resume"), job) is None
    assert control_problem(event("set", "temperature", json.dumps(0.7)), job) is None
    assert "unknown control kind 'reboot'" in control_problem(event("reboot"), job)
    assert control_problem(event("cancel"), job) == "cancel announced, but the job record says 'running'"
    assert control_problem(event("cancel"), job.model_copy(update={"state": "cancelled"})) is None
    assert "no live knob" in control_problem(event("set", "algorithm.steps", "3"), job)
    assert "not JSON" in control_problem(event("set", "temperature", "{"), job)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_no_task_or_event_makes_a_check_raise(job, data):
    task = data.draw(messages(bus_pb2.PromptTask, "J"))
    assert isinstance(task_problem(task, list(task.prompt_token_ids), LIMITS, job) or "", str)
    eval_task = data.draw(messages(bus_pb2.EvalTask, "J"))
    assert isinstance(eval_task_problem(eval_task, LIMITS, job) or "", str)
    assert isinstance(control_problem(data.draw(messages(bus_pb2.ControlEvent, "J")), job) or "", str)


def test_limits_come_from_the_versions_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 50, "max_position_embeddings": 256}))
    assert ModelLimits.of(tmp_path, None) == ModelLimits(50, 256)
    assert ModelLimits.of(tmp_path, 128) == ModelLimits(50, 128)
    assert ModelLimits.of(tmp_path / "missing", None) == ModelLimits(None, None)
    assert ModelLimits.of(None, 128) == ModelLimits(None, 128)
