"""The reward client against a real grpc.aio server on loopback: gRPC's retry policy, set by the client's
channel options, retries UNAVAILABLE and nothing else, for the blocking and the asyncio client alike."""

import asyncio
import json

import grpc
import pytest

from asympo.proto.v1 import reward_pb2, reward_pb2_grpc
from services.reward.client import (
    AsyncRewardClient,
    RewardClient,
    RewardServiceError,
    RewardServiceUnavailable,
    channel_options,
)
from services.reward.settings import MAX_REQUEST_BYTES

# Past gRPC's default per-call retry buffer (256 KiB), beyond which it no longer retries a call.
BIG = "x" * (1 << 20)


class Flaky(reward_pb2_grpc.RewardServiceServicer):
    """Fails the first `fails` calls with `code` (a Trailers-Only error, as the real service sends), then scores."""

    def __init__(self, fails: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE):
        self.fails = fails
        self.code = code
        self.calls = 0

    async def Score(self, request, context):
        self.calls += 1
        if self.calls <= self.fails:
            await context.abort(self.code, f"call {self.calls} fails")
        return reward_pb2.ScoreResponse(
            scores=[reward_pb2.Score(reward=1.0, status="ok") for _ in request.items]
        )


@pytest.fixture
async def serve():
    servers = []

    async def start(servicer: Flaky) -> str:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES)])
        reward_pb2_grpc.add_RewardServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        await server.stop(None)


async def score(kind: str, target: str, completion: str = "1", **kw):
    """One Score call through the blocking client (on a thread: the server runs on this loop) or the async one."""
    if kind == "sync":

        def call():
            with RewardClient(target, **kw) as c:
                return c.score("v", [completion], ["1"], deadline_s=10)

        return await asyncio.to_thread(call)
    async with AsyncRewardClient(target, **kw) as c:
        return await c.score("v", [completion], ["1"], deadline_s=10)


CLIENTS = pytest.mark.parametrize("kind", ["sync", "async"])


@CLIENTS
@pytest.mark.parametrize("completion", ["1", BIG], ids=["small", "1MiB"])
async def test_unavailable_is_retried_until_the_service_answers(serve, kind, completion):
    servicer = Flaky(fails=3)
    results = await score(kind, await serve(servicer), completion, retries=3, backoff_s=0.01)
    assert [r.status for r in results] == ["ok"]
    assert servicer.calls == 4


@CLIENTS
async def test_retries_stop_at_the_limit_and_name_the_target(serve, kind):
    servicer = Flaky(fails=100)
    target = await serve(servicer)
    with pytest.raises(RewardServiceUnavailable) as e:
        await score(kind, target, retries=2, backoff_s=0.01)
    assert servicer.calls == 3
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert (
        target in str(e.value)
        and "after at most 3 attempts" in str(e.value)
        and "call 3 fails" in str(e.value)
    )


@CLIENTS
@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL])
async def test_other_codes_are_not_retried(serve, kind, code):
    servicer = Flaky(fails=1, code=code)
    with pytest.raises(RewardServiceError) as e:
        await score(kind, await serve(servicer), retries=4, backoff_s=0.01)
    assert not isinstance(e.value, RewardServiceUnavailable)
    assert e.value.code == code and servicer.calls == 1


@CLIENTS
async def test_no_retries(serve, kind):
    servicer = Flaky(fails=1)
    with pytest.raises(RewardServiceUnavailable, match="after 1 attempt:"):
        await score(kind, await serve(servicer), retries=0)
    assert servicer.calls == 1


def test_channel_options():
    options = dict(channel_options(retries=3, backoff_s=0.25))
    assert options["grpc.enable_retries"] == 1
    (method,) = json.loads(options["grpc.service_config"])["methodConfig"]
    assert method["name"] == [{"service": "asympo.v1.RewardService"}]
    assert method["retryPolicy"] == {
        "maxAttempts": 4,
        "initialBackoff": "0.250000000s",
        "maxBackoff": "1.000000000s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    (method,) = json.loads(dict(channel_options(retries=0))["grpc.service_config"])["methodConfig"]
    assert "retryPolicy" not in method
    # The caller's options win over the client's.
    assert dict(channel_options(options=[("grpc.enable_retries", 0)]))["grpc.enable_retries"] == 0
    with pytest.raises(ValueError, match="at most 5 attempts"):
        channel_options(retries=5)
    with pytest.raises(ValueError, match="backoff_s"):
        channel_options(backoff_s=0)
    with pytest.raises(ValueError, match="backoff_s"):
        RewardClient("127.0.0.1:1", backoff_s=-1)
