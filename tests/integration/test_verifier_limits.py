"""Verifiers under hostile input, on a real reward service (`python -m services.reward`, gRPC on loopback):
every verifier runs under the pool's deadline, so none stalls a concurrent request; the service publishes
its verifier catalog to Redis and the real gateway refuses a job naming a verifier it does not offer."""

from __future__ import annotations

import os
import secrets
import time

import grpc
import httpx
import pytest

from asympo.jobs import verifier_catalog
from asympo.proto.v1 import reward_pb2, reward_pb2_grpc
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from tests.support.service_process import ServiceProcess, grpc_metadata

API_TOKEN = "limits-" + secrets.token_hex(12)
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
SPIN_DEADLINE_MS = 1500
MB = 1_000_000

# A plugin verifier that claims to be cheap (`isolated=False`, which used to mean "run it on the service's
# event loop") and never returns, holding the CPU the way Fraction("1e10000000") did in `exact`.
PLUGIN = '''
from services.reward.verifiers import register_verifier


@register_verifier("limits_spin", isolated=False)
def spin(completion, reference):
    """Never returns."""
    while True:
        pass
'''


@pytest.fixture(scope="module")
def service(tmp_path_factory, redis_server):
    """A reward service with 2 workers, the spinning plugin, a 1 MB completion cap, publishing to Redis."""
    plugin_dir = tmp_path_factory.mktemp("plugin")
    (plugin_dir / "limits_plugin.py").write_text(PLUGIN)
    path = os.pathsep.join(p for p in (str(plugin_dir), os.environ.get("PYTHONPATH", "")) if p)
    svc = ServiceProcess(
        "services.reward", "--workers", "2", "--default-deadline-ms", "5000",
        env={"PYTHONPATH": path, "ASYMPO_REWARD_PLUGINS": "limits_plugin",
             "ASYMPO_REWARD_MAX_COMPLETION_CHARS": str(MB), "ASYMPO_REDIS_URL": redis_server.url},
        start_timeout_s=60,
    )  # fmt: skip
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def stub(service):
    with grpc.insecure_channel(
        service.target, options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        yield reward_pb2_grpc.RewardServiceStub(channel)


def request(verifier: str, pairs, deadline_ms: int = 0) -> reward_pb2.ScoreRequest:
    items = [reward_pb2.ScoreItem(completion=c, reference=r) for c, r in pairs]
    return reward_pb2.ScoreRequest(verifier=verifier, items=items, deadline_ms=deadline_ms)


def score(stub, req: reward_pb2.ScoreRequest):
    """The statuses of a Score call and how long it took."""
    t0 = time.monotonic()
    response = stub.Score(req, metadata=grpc_metadata(), timeout=60)
    return [s.status for s in response.scores], time.monotonic() - t0


def wait_until_busy(service, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while service.metric("asympo_reward_pool_busy_workers") < 1:
        assert time.monotonic() < deadline, "no worker ever took the spinning item"
        time.sleep(0.02)


def test_no_verifier_holds_up_a_concurrent_request(service, stub):
    t0 = time.monotonic()
    spinning = stub.Score.future(
        request("limits_spin", [("x", "x")], SPIN_DEADLINE_MS),
        metadata=grpc_metadata(),
        timeout=60,
    )
    wait_until_busy(service)
    # `exact` on the number that took Fraction 13.5 s (at a hundredth of this exponent) on the event loop.
    absurd = [("\\boxed{1e100000000}", "5"), ("1e100000000", "5"), ("so \\boxed{1e100000000}", "1e100000000")]
    statuses, elapsed = score(stub, request("exact", absurd))
    assert statuses == ["wrong", "wrong", "ok"]
    assert elapsed < 1.0, f"exact took {elapsed:.2f} s while another item spun"
    statuses, elapsed = score(stub, request("exact", [("\\boxed{12}", "12")] * 8))
    assert statuses == ["ok"] * 8 and elapsed < 1.0, elapsed
    # The spinning item gets its own answer when its deadline passes: timeout, its worker killed.
    result = spinning.result().scores[0]
    assert result.status == "timeout" and "worker killed" in result.detail, result
    assert SPIN_DEADLINE_MS / 1000 <= time.monotonic() - t0 < SPIN_DEADLINE_MS / 1000 + 10


def test_megabyte_hostile_completions_are_answered_within_their_deadline(stub):
    hostile = [
        ("exact", "\\boxed{" * 140_000),
        ("exact", "\\boxed{" * 70_000 + "}" * 70_000),
        ("exact", "\\boxed{" + "9" * (MB - 8)),
        ("exact", "1," * 450_000 + "1"),
        ("exact", "9" * 500_000 + "e" + "9" * 499_999),
        ("format:think:exact", "<think>" + "</thin" * 160_000),
        ("format:boxed:exact", "\\boxed" + " " * (MB - 6)),
    ]
    for name, completion in hostile:
        assert len(completion) <= MB
        # 5 s per item, for work that takes milliseconds: a superlinear parser would miss it by hours.
        statuses, _ = score(stub, request(name, [(completion, "5")]))
        assert statuses[0] in ("wrong", "unparsable"), (name, completion[:40], statuses)


def wait_for_catalog(redis_server) -> verifier_catalog.VerifierCatalog:
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_server.url)
    deadline = time.monotonic() + 30
    try:
        while (raw := client.get(verifier_catalog.KEY)) is None:
            assert time.monotonic() < deadline, "the reward service never published its catalog"
            time.sleep(0.05)
    finally:
        client.close()
    return verifier_catalog.VerifierCatalog.from_json(raw)


def test_the_service_publishes_its_catalog(service, published):
    assert {"exact", "math", "limits_spin"} <= set(published.names)
    assert published.families == {"format": "format:<boxed|think>:<verifier>"}
    assert any(r.get("msg") == "verifier catalog published" for r in service.records)


@pytest.fixture(scope="module")
def published(service, redis_server):
    """The catalog the service published on start; removed at the end, the session's Redis is shared."""
    yield wait_for_catalog(redis_server)
    import redis as sync_redis

    with sync_redis.Redis.from_url(redis_server.url) as client:
        client.delete(verifier_catalog.KEY)


@pytest.fixture
async def gateway(redis, published):
    await verifier_catalog.publish(redis, published)  # as on the service's start, whatever a test did
    settings = GatewaySettings(api_token=API_TOKEN, redis_url="redis://unused:1/0")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(settings, redis)), base_url="http://gw"
    ) as c:
        yield c
    for job_id in [x.decode() for x in await redis.lrange("asympo:queue", 0, -1)]:
        if job_id.startswith("limits-"):
            await redis.lrem("asympo:queue", 0, job_id)
            await redis.hdel("asympo:jobs", job_id)


def spec(verifier: str) -> dict:
    return {"name": "limits", "verifier": verifier, "algorithm": {"steps": 3, "max_staleness": 1}}


async def test_the_gateway_refuses_a_verifier_the_reward_service_does_not_offer(gateway, redis):
    for name in ("exact", "math", "limits_spin", "format:think:format:boxed:math"):
        r = await gateway.post("/v1/jobs", json=spec(name), headers=AUTH)
        assert r.status_code == 201, (name, r.text)
    for name in ("exakt", "sympy:exact", "format"):
        r = await gateway.post("/v1/jobs", json=spec(name), headers=AUTH)
        assert r.status_code == 422, (name, r.text)
        [problem] = r.json()["detail"]["problems"]
        assert problem["field"] == "verifier"
        assert problem["error"].startswith(f"unknown verifier {name!r}; the reward service offers: exact, ")
        assert "limits_spin" in problem["error"] and "format:<boxed|think>:<verifier>" in problem["error"]
    queued = [x.decode() for x in await redis.lrange("asympo:queue", 0, -1)]
    assert sum(j.startswith("limits-") for j in queued) == 4  # nothing was queued for the refused ones


async def test_without_a_catalog_the_gateway_accepts_any_name(gateway, redis):
    await redis.delete(verifier_catalog.KEY)
    r = await gateway.post("/v1/jobs", json=spec("not_yet_known"), headers=AUTH)
    assert r.status_code == 201, r.text
    # What is stored but unreadable is no catalog either: it must not block every submission.
    await redis.set(verifier_catalog.KEY, b"{not json")
    r = await gateway.post("/v1/jobs", json=spec("not_yet_known"), headers=AUTH)
    assert r.status_code == 201, r.text


async def test_a_malformed_name_is_still_a_spec_error(gateway):
    r = await gateway.post("/v1/jobs", json=spec("Exact!"), headers=AUTH)
    assert r.status_code == 422
    assert r.json()["detail"]["problems"][0]["field"] == "verifier"
