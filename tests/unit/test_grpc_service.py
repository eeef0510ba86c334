"""The shared gRPC scaffold on a real loopback server: bound port, health, graceful stop."""

import asyncio
import os
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from asympo.proto.v1 import reward_pb2, reward_pb2_grpc
from asympo.runtime.grpc_server import GrpcServer

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class SlowReward(reward_pb2_grpc.RewardServiceServicer):
    def __init__(self):
        self.arrived = asyncio.Event()

    async def Score(self, request, context):
        self.arrived.set()
        await asyncio.sleep(request.deadline_ms / 1000)
        return reward_pb2.ScoreResponse()


async def started(servicer: SlowReward | None = None) -> GrpcServer:
    server = GrpcServer("127.0.0.1", 0)
    server.add_service(
        reward_pb2_grpc.add_RewardServiceServicer_to_server,
        servicer or SlowReward(),
        "asympo.v1.RewardService",
    )
    assert await server.start() == server.port > 0
    return server


async def test_health_watch_sees_not_serving_and_in_flight_rpcs_finish():
    servicer = SlowReward()
    server = await started(servicer)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ["", "asympo.v1.RewardService"]:
            assert (await health.Check(health_pb2.HealthCheckRequest(service=name))).status == SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(service="asympo.v1.RewardService"))
        assert (await watch.read()).status == SERVING
        slow = asyncio.ensure_future(reward_pb2_grpc.RewardServiceStub(channel).Score(
            reward_pb2.ScoreRequest(deadline_ms=300)
        ))  # fmt: skip
        await asyncio.wait_for(servicer.arrived.wait(), 30)  # in flight when the stop begins
        stopping = asyncio.ensure_future(server.stop(grace_s=5))
        assert (await watch.read()).status == NOT_SERVING
        watch.cancel()  # an open Watch stream is itself an in-flight RPC that would hold the grace period
        assert await slow == reward_pb2.ScoreResponse()  # finished inside the grace period
        await stopping
        await server.stop(5)  # idempotent
        await asyncio.wait_for(server.wait(), 1)


async def test_a_taken_port_is_a_clear_error():
    server = await started()
    try:
        other = GrpcServer("127.0.0.1", server.port)
        with pytest.raises(OSError, match=f"127.0.0.1:{server.port}"):
            await other.start()
        with pytest.raises(RuntimeError, match="before start"):
            server.add_service(lambda s, srv: None, None, "x")
    finally:
        await server.stop(0)


async def test_serve_until_signal_stops_on_sigterm():
    server = await started()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(server.serve_until_signal(grace_s=1), 10) == signal.SIGTERM
    await asyncio.wait_for(server.wait(), 1)
    # The handler is gone again: the default SIGTERM disposition is back for the rest of the session.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
