"""The shared gRPC scaffold on a real loopback server: bound port, health, graceful stop, the shared
token, TLS."""

import asyncio
import os
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from asympo.proto.v1 import learner_pb2, learner_pb2_grpc, reward_pb2, reward_pb2_grpc
from asympo.runtime.grpc_auth import (
    GRPC_TOKEN_ENV,
    ClientAuth,
    GrpcSecuritySettings,
    TokenInterceptor,
    saved_token,
)
from asympo.runtime.grpc_server import GrpcServer
from asympo.runtime.settings import SettingsError

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


# ---- the shared token and TLS ----------------------------------------------------------------------------

TOKEN = "unit-test-grpc-token-7d1e"


class Streaming(learner_pb2_grpc.LearnerServiceServicer):
    """A server-streaming RPC: the refusal must take the RPC's own shape."""

    async def FetchWeights(self, request, context):
        yield learner_pb2.WeightChunk(path="a")
        yield learner_pb2.WeightChunk(path="b")


async def authenticated(**kw) -> GrpcServer:
    server = GrpcServer("127.0.0.1", 0, token=TOKEN, **kw)
    server.add_service(
        reward_pb2_grpc.add_RewardServiceServicer_to_server, SlowReward(), "asympo.v1.RewardService"
    )
    server.add_service(
        learner_pb2_grpc.add_LearnerServiceServicer_to_server, Streaming(), "asympo.v1.LearnerService"
    )
    await server.start()
    return server


@pytest.mark.parametrize(
    "metadata, code",
    [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", TOKEN),), grpc.StatusCode.UNAUTHENTICATED),  # no scheme
        ((("authorization", f"Basic {TOKEN}"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer "),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", f"Bearer {TOKEN}x"),), grpc.StatusCode.PERMISSION_DENIED),
        ((("authorization", f"Bearer {TOKEN[:-1]}"),), grpc.StatusCode.PERMISSION_DENIED),
        ((("authorization", f"Bearer {TOKEN}"),), grpc.StatusCode.OK),
        ((("authorization", f"bearer {TOKEN}"),), grpc.StatusCode.OK),  # the scheme is case-insensitive
    ],
)
async def test_the_token_is_checked_on_unary_and_streaming_rpcs(metadata, code):
    server = await authenticated()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            unary = reward_pb2_grpc.RewardServiceStub(channel).Score(
                reward_pb2.ScoreRequest(), metadata=metadata
            )
            stream = learner_pb2_grpc.LearnerServiceStub(channel).FetchWeights(
                learner_pb2.FetchWeightsRequest(), metadata=metadata
            )
            for call in (unary, stream):
                try:
                    got = await call if call is unary else [c.path async for c in call]
                except grpc.RpcError as e:
                    assert e.code() == code, e.details()
                    assert code != grpc.StatusCode.OK
                    if code == grpc.StatusCode.UNAUTHENTICATED:
                        assert "authorization: Bearer" in e.details()
                else:
                    assert code == grpc.StatusCode.OK
                    assert got == (reward_pb2.ScoreResponse() if call is unary else ["a", "b"])
            # Health answers anyone: probes send no metadata.
            health = health_pb2_grpc.HealthStub(channel)
            assert (await health.Check(health_pb2.HealthCheckRequest())).status == SERVING
    finally:
        await server.stop(0)


async def test_an_unauthenticated_call_to_an_unknown_method_learns_nothing():
    server = await authenticated()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            method = channel.unary_unary("/asympo.v1.Nothing/Here")
            with pytest.raises(grpc.RpcError) as refused:
                await method(b"")
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as unknown:
                await method(b"", metadata=ClientAuth(TOKEN).metadata)
            assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(0)


@pytest.mark.parametrize(
    "token, message",
    [
        ("", "no gRPC token"),
        ("short", "at least 16"),
        ("has a space in it, long enough", "printable ASCII"),
        ("ünïcödé-token-long-enough", "printable ASCII"),
    ],
)
def test_unusable_tokens_are_refused(token, message):
    with pytest.raises(ValueError, match=message):
        TokenInterceptor(token)


def test_service_settings_require_a_token(monkeypatch):
    from services.learner.settings import load_settings as learner
    from services.reward.settings import load_settings as reward
    from services.rollout.settings import load_settings as rollout

    monkeypatch.delenv(GRPC_TOKEN_ENV, raising=False)
    for load in (reward, rollout, learner):
        with pytest.raises(SettingsError, match=f"grpc_token .*no gRPC token: set {GRPC_TOKEN_ENV}"):
            load([])
        with pytest.raises(SettingsError, match="at least 16"):
            load(["--grpc-token", "too-short"])
        assert load(["--grpc-token", TOKEN]).grpc_token == TOKEN
    monkeypatch.setenv(GRPC_TOKEN_ENV, TOKEN)
    assert reward([]).grpc_token == TOKEN and TOKEN not in repr(reward([]))


def test_the_local_stack_token_is_made_once_and_private(tmp_path):
    path = tmp_path / "home" / "grpc-token"
    token, created = saved_token(path)
    assert created and len(token) >= 16 and TokenInterceptor(token)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert saved_token(path) == (token, False)


def openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.fail(
            "openssl not found: the TLS tests make their certificates with it (apt-get install openssl)"
        )
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        cwd=d,
    )
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    return d


class _Settings(GrpcSecuritySettings):
    host: str = "127.0.0.1"
    port: int = 0


async def status_of(auth: ClientAuth, port: int) -> grpc.StatusCode:
    """The code a Score call through `auth`'s channel ends with."""
    async with auth.aio_channel(f"127.0.0.1:{port}") as channel:
        try:
            await reward_pb2_grpc.RewardServiceStub(channel).Score(
                reward_pb2.ScoreRequest(), metadata=auth.metadata, timeout=5
            )
        except grpc.RpcError as e:
            return e.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("mutual", [False, True])
async def test_tls_from_the_settings(pki, mutual):
    settings = _Settings(
        grpc_token=TOKEN, tls_cert=pki / "server.pem", tls_key=pki / "server.key",
        tls_client_ca=pki / "ca.pem" if mutual else None,
    )  # fmt: skip
    server = GrpcServer.for_service(settings)
    server.add_service(
        reward_pb2_grpc.add_RewardServiceServicer_to_server, SlowReward(), "asympo.v1.RewardService"
    )
    port = await server.start()
    try:
        assert server.tls
        client = ClientAuth(TOKEN, ca=pki / "ca.pem", cert=pki / "client.pem", key=pki / "client.key")
        assert await status_of(client, port) == grpc.StatusCode.OK
        assert await status_of(ClientAuth(TOKEN), port) == grpc.StatusCode.UNAVAILABLE  # plaintext
        assert await status_of(ClientAuth(None, ca=pki / "ca.pem"), port) == (
            grpc.StatusCode.UNAVAILABLE if mutual else grpc.StatusCode.UNAUTHENTICATED
        )
    finally:
        await server.stop(0)


def test_tls_settings_go_together(pki):
    with pytest.raises(ValueError, match="tls_cert and tls_key go together"):
        _Settings(grpc_token=TOKEN, tls_cert=pki / "server.pem")
    with pytest.raises(ValueError, match="tls_client_ca needs tls_cert"):
        _Settings(grpc_token=TOKEN, tls_client_ca=pki / "ca.pem")
    with pytest.raises(ValueError, match="does not exist|path_not_file"):
        _Settings(grpc_token=TOKEN, tls_cert=pki / "nope.pem", tls_key=pki / "server.key")
