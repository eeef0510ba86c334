"""Every asympo gRPC service behind its shared token, on real loopback servers built as the services build
them: calls without the token or with a wrong one are refused, health answers anyone, the right token
works; FetchWeights hands out only the served job's versions; Generate and Score refuse requests over
their caps.

The reward service runs as its real process. Rollout and learner servers are built in-process by the
functions their services call (`services.rollout.server.grpc_server`, `services.learner.server.grpc_server`),
so the test needs no engine and no training; the last test starts both as real processes too (no job,
so no engine and no model are loaded).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from asympo.bus.local_redis import start_redis
from asympo.jobs.spec import TinyModelSpec
from asympo.proto.v1 import (
    bus_pb2,
    learner_pb2,
    learner_pb2_grpc,
    reward_pb2,
    reward_pb2_grpc,
    rollout_pb2,
    rollout_pb2_grpc,
)
from asympo.runtime.grpc_auth import GRPC_TOKEN_ENV, ClientAuth
from asympo.weights.store import MANIFEST, WeightsError, write_version
from asympo.weights.transfer import fetch_version
from services.reward.client import RewardClient, RewardServiceError
from tests.support.service_process import REPO, ServiceProcess

TOKEN = "grpc-auth-test-token-5f3a9c1e"
RIGHT = ClientAuth(TOKEN).metadata
WRONG = ClientAuth("grpc-auth-test-token-00000000").metadata
SERVING = health_pb2.HealthCheckResponse.SERVING


def check_refusals(channel: grpc.Channel, call) -> None:
    """`call(metadata)` is refused without a token and with a wrong one; health answers without one."""
    for metadata, code in (((), grpc.StatusCode.UNAUTHENTICATED), (WRONG, grpc.StatusCode.PERMISSION_DENIED),
                           ((("authorization", f"Basic {TOKEN}"),), grpc.StatusCode.UNAUTHENTICATED)):  # fmt: skip
        with pytest.raises(grpc.RpcError) as refused:
            call(metadata)
        assert refused.value.code() == code, (metadata, refused.value.details())
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING


async def check_refusals_async(channel: grpc.aio.Channel, call) -> None:
    """The asyncio twin of check_refusals."""
    for metadata, code in (((), grpc.StatusCode.UNAUTHENTICATED), (WRONG, grpc.StatusCode.PERMISSION_DENIED)):
        with pytest.raises(grpc.RpcError) as refused:
            await call(metadata)
        assert refused.value.code() == code, (metadata, await refused.value.details())
    health = health_pb2_grpc.HealthStub(channel)
    assert (await health.Check(health_pb2.HealthCheckRequest(), timeout=10)).status == SERVING


# ---- reward: the real process ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reward():
    svc = ServiceProcess(
        "services.reward", "--workers", "1", start_timeout_s=60,
        env={GRPC_TOKEN_ENV: TOKEN, "ASYMPO_REWARD_MAX_ITEMS": "8",
             "ASYMPO_REWARD_MAX_COMPLETION_CHARS": "100", "ASYMPO_REWARD_MAX_TEXT_CHARS": "1000"},
    )  # fmt: skip
    yield svc
    svc.stop()


def test_reward_needs_the_token(reward):
    request = reward_pb2.ScoreRequest(
        verifier="exact", items=[reward_pb2.ScoreItem(completion="4", reference="4")]
    )
    with grpc.insecure_channel(reward.target) as channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        check_refusals(channel, lambda md: stub.Score(request, timeout=10, metadata=md))
        assert [s.status for s in stub.Score(request, timeout=10, metadata=RIGHT).scores] == ["ok"]
    with RewardClient(reward.target, auth=ClientAuth("not-the-right-token-at-all")) as client:
        with pytest.raises(RewardServiceError) as refused:
            client.score("exact", ["4"], ["4"])
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    "items, cap",
    [
        ([reward_pb2.ScoreItem(completion="1", reference="1")] * 9, "limit is 8 (max_items)"),
        (
            [reward_pb2.ScoreItem(completion="x" * 1001, reference="1")],
            "items[0].completion has 1001 characters",
        ),
        ([reward_pb2.ScoreItem(completion="1", reference="y" * 1001)], "the limit is 1000 (max_text_chars)"),
    ],
)
def test_score_over_a_cap_is_invalid_argument(reward, items, cap):
    with grpc.insecure_channel(reward.target) as channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Score(reward_pb2.ScoreRequest(verifier="exact", items=items), timeout=10, metadata=RIGHT)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert cap in refused.value.details()


def test_the_client_keeps_a_large_batch_under_the_caps(reward):
    """20 items against max_items 8 go as three requests; texts over max_text_chars are answered unsent."""
    completions = [str(i) for i in range(20)]
    completions[3] = "z" * 1001  # over the hard cap: never sent
    completions[5] = "w" * 500  # over the parse cap only: sent, and the service says unparsable
    references = [str(i) for i in range(20)]
    references[7] = "r" * 1001
    with RewardClient(reward.target, auth=ClientAuth(TOKEN), max_items=8, max_text_chars=1000) as client:
        results = client.score("exact", completions, references)
    statuses = [r.status for r in results]
    assert statuses[3] == "unparsable" and "not sent" in results[3].detail
    assert statuses[5] == "unparsable" and "not parsed" in results[5].detail
    assert statuses[7] == "error" and "not sent" in results[7].detail
    assert [s for i, s in enumerate(statuses) if i not in (3, 5, 7)] == ["ok"] * 17


@pytest.mark.parametrize(
    "token, message",
    [(None, f"no gRPC token: set {GRPC_TOKEN_ENV}"), ("short-token", "at least 16 characters")],
)
def test_a_service_without_a_usable_token_does_not_start(token, message):
    env = {k: v for k, v in os.environ.items() if k != GRPC_TOKEN_ENV}
    if token:
        env[GRPC_TOKEN_ENV] = token
    run = subprocess.run(
        [sys.executable, "-m", "services.reward", "--port", "0", "--metrics-port", "-1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2 and message in run.stderr, run.stderr


# ---- rollout: the pod's server, built as RolloutService.run builds it --------------------------------------


@pytest.fixture
async def rollout_server(tmp_path):
    from services.rollout.pod import RolloutPod
    from services.rollout.server import grpc_server
    from services.rollout.settings import RolloutSettings

    settings = RolloutSettings(
        grpc_token=TOKEN, pod="auth-pod", host="127.0.0.1", port=0, metrics_port=-1,
        weights_dir=tmp_path / "weights", generate_max_prompts=4, generate_max_completions=8,
        generate_max_new_tokens=32, generate_max_prompt_chars=50,
    )  # fmt: skip
    server = grpc_server(RolloutPod(settings))
    await server.start()
    yield server
    await server.stop(0)


async def test_rollout_needs_the_token(rollout_server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{rollout_server.port}") as channel:
        stub = rollout_pb2_grpc.RolloutServiceStub(channel)
        request = rollout_pb2.RolloutStatusRequest()
        await check_refusals_async(channel, lambda md: stub.Status(request, timeout=10, metadata=md))
        assert (await stub.Status(request, timeout=10, metadata=RIGHT)).pod == "auth-pod"


@pytest.mark.parametrize(
    "prompts, n, max_new_tokens, cap",
    [
        (["1+1="] * 5, 1, 8, "generate_max_prompts"),
        (["1+1="] * 3, 3, 8, "generate_max_completions"),
        (["1+1="], 1, 33, "generate_max_new_tokens"),
        (["1+1=", "9" * 51], 1, 8, "generate_max_prompt_chars"),
        (["1+1="], 1025, 8, "n must be in 1..1024"),
    ],
)
async def test_generate_over_a_cap_is_invalid_argument(rollout_server, prompts, n, max_new_tokens, cap):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{rollout_server.port}") as channel:
        stub = rollout_pb2_grpc.RolloutServiceStub(channel)
        sampling = bus_pb2.SamplingParams(max_new_tokens=max_new_tokens)
        with pytest.raises(grpc.RpcError) as refused:
            await stub.Generate(
                rollout_pb2.GenerateRequest(prompts=prompts, n=n, sampling=sampling),
                timeout=10,
                metadata=RIGHT,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert cap in refused.value.details()
        # At the caps the request passes them, and only the missing model stops it.
        within = rollout_pb2.GenerateRequest(
            prompts=["1" * 50] * 2, n=4, sampling=bus_pb2.SamplingParams(max_new_tokens=32)
        )
        with pytest.raises(grpc.RpcError) as no_model:
            await stub.Generate(within, timeout=10, metadata=RIGHT)
        assert no_model.value.code() == grpc.StatusCode.FAILED_PRECONDITION


# ---- learner: rank 0's server, built as LearnerService.run builds it ---------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A weight store with version 0 of job-a and of job-b, and a version outside the store."""
    from asympo.models.tiny import build_model, build_tokenizer

    root = tmp_path_factory.mktemp("weights")
    tok = build_tokenizer()
    model = build_model(TinyModelSpec(), tok)
    for job in ("job-a", "job-b", "x"):
        write_version(root / ("store" if job != "x" else ""), job, 0, 0, model, tok)
    return root / "store"


@pytest.fixture
async def learner_server(store):
    from services.learner.server import grpc_server
    from services.learner.settings import LearnerSettings

    settings = LearnerSettings(
        grpc_token=TOKEN, host="127.0.0.1", port=0, metrics_port=-1, weight_store=store
    )
    # What Status and FetchWeights read of the job run in progress.
    progress = SimpleNamespace(step=2, version=2, dropped={})
    run = SimpleNamespace(job_id="job-a", staleness_counts={0: 3}, progress=progress)
    server = grpc_server(settings, lambda: run)
    await server.start()
    yield f"127.0.0.1:{server.port}"
    await server.stop(0)


def fetch(target: str, job_id: str, version: int = 0, metadata=RIGHT) -> list[learner_pb2.WeightChunk]:
    with grpc.insecure_channel(target) as channel:
        stub = learner_pb2_grpc.LearnerServiceStub(channel)
        request = learner_pb2.FetchWeightsRequest(job_id=job_id, version=version)
        return list(stub.FetchWeights(request, timeout=30, metadata=metadata))


async def test_learner_needs_the_token(learner_server, tmp_path):
    def calls():
        with grpc.insecure_channel(learner_server) as channel:
            stub = learner_pb2_grpc.LearnerServiceStub(channel)
            check_refusals(channel, lambda md: stub.Status(learner_pb2.LearnerStatusRequest(), metadata=md))
            check_refusals(channel, lambda md: fetch(learner_server, "job-a", 0, md))
            assert stub.Status(learner_pb2.LearnerStatusRequest(), metadata=RIGHT).job_id == "job-a"
        assert fetch(learner_server, "job-a")[-1].path == MANIFEST
        with pytest.raises(WeightsError, match="UNAUTHENTICATED"):
            fetch_version(learner_server, "job-a", 0, tmp_path / "a", auth=ClientAuth())
        return fetch_version(learner_server, "job-a", 0, tmp_path / "b", auth=ClientAuth(TOKEN))

    assert (await asyncio.to_thread(calls)) == tmp_path / "b" / "job-a" / "v0"


@pytest.mark.parametrize(
    "job_id, code",
    [
        ("../x", grpc.StatusCode.INVALID_ARGUMENT),  # store/../x/v0 holds a valid version: never served
        ("/etc", grpc.StatusCode.INVALID_ARGUMENT),
        (str(REPO), grpc.StatusCode.INVALID_ARGUMENT),
        ("job-b", grpc.StatusCode.PERMISSION_DENIED),  # stored here, but not the job this learner serves
        ("job-c", grpc.StatusCode.PERMISSION_DENIED),
    ],
)
async def test_fetch_weights_serves_only_the_served_job(learner_server, job_id, code):
    with pytest.raises(grpc.RpcError) as refused:
        await asyncio.to_thread(fetch, learner_server, job_id)
    assert refused.value.code() == code, refused.value.details()


# ---- the services' own processes --------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["rollout", "learner"])
def test_service_processes_need_the_token(service, tmp_path):
    with start_redis(tmp_path / "redis") as redis:
        flags = {
            "rollout": ["--redis-url", redis.url, "--job-id", "no-such-job", "--weights-dir", str(tmp_path / "w")],
            "learner": ["--redis-url", redis.url, "--weight-store", str(tmp_path / "s"),
                        "--checkpoint-dir", str(tmp_path / "c")],
        }[service]  # fmt: skip
        process = ServiceProcess(f"services.{service}", *flags, env={GRPC_TOKEN_ENV: TOKEN})
        try:
            stubs = {"rollout": (rollout_pb2_grpc.RolloutServiceStub, rollout_pb2.RolloutStatusRequest()),
                     "learner": (learner_pb2_grpc.LearnerServiceStub, learner_pb2.LearnerStatusRequest())}  # fmt: skip
            stub_class, request = stubs[service]
            with grpc.insecure_channel(process.target) as channel:
                stub = stub_class(channel)
                check_refusals(channel, lambda md: stub.Status(request, timeout=10, metadata=md))
                stub.Status(request, timeout=10, metadata=RIGHT)
        finally:
            assert process.stop() == 0
