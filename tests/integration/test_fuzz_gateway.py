"""Schema-driven fuzzing of the running gateway (schemathesis on its own /openapi.json).

Every operation gets cases generated from its schema (valid job specs, knob changes, ids and query
parameters) and cases built to violate it, sent with the right token, a wrong one and none. No response
may be a 5xx, the gateway process must stay up, and whatever it queued must be a job the learner can
read. `ASYMPO_FUZZ_SEED=N` replays a run (the seed is printed).
"""

from __future__ import annotations

import os
import random
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from redis import Redis
from schemathesis.generation import GenerationMode

from asympo.bus import QUEUE
from asympo.bus.local_redis import start_redis
from asympo.jobs.records import JobRecord
from asympo.runtime.api_token import TOKEN_ENV
from tests.support.service_process import ServiceProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TOKEN = "fuzz-token-5f0c2a9e81d34b7c"
# Cases per operation: (token sent, generation mode) -> examples; 10 operations make ~2,100 requests,
# and the routes of one job 30 more each, aimed at a job that exists.
# Negative cases may also drop or garble the Authorization header itself.
PLAN = {("right", GenerationMode.POSITIVE): 100, ("right", GenerationMode.NEGATIVE): 80,
        ("wrong", GenerationMode.POSITIVE): 15, ("none", GenerationMode.NEGATIVE): 15}  # fmt: skip
HEADERS = {"right": {"Authorization": f"Bearer {TOKEN}"}, "wrong": {"Authorization": "Bearer not-the-token-0000"},
           "none": {}}  # fmt: skip


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    with start_redis(tmp_path_factory.mktemp("fuzz-redis")) as server:
        env = {"ASYMPO_REDIS_URL": server.url, TOKEN_ENV: TOKEN}
        process = ServiceProcess("services.gateway", env=env, metrics_flag=False)
        try:
            yield process, server.url
        finally:
            process.stop()


def test_a_thousand_generated_requests_get_no_5xx_and_leave_the_gateway_up(gateway):
    process, redis_url = gateway
    base = f"http://127.0.0.1:{process.port}"
    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    run_seed = int(os.environ.get("ASYMPO_FUZZ_SEED") or random.randrange(2**32))
    print(f"fuzz seed {run_seed}")
    statuses: Counter[tuple[str, int]] = Counter()
    errors: list[str] = []

    def fuzz(op, token: str, mode: GenerationMode, examples: int, **fixed) -> None:
        @seed(run_seed)
        @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=op.as_strategy(generation_mode=mode, **fixed))
        def send(case):
            response = case.call(base_url=base, headers=HEADERS[token], timeout=30)
            statuses[(token, response.status_code)] += 1
            if response.status_code >= 500:
                errors.append(
                    f"{op.label} [{token}, {mode.value}]: {response.status_code} {response.text[:300]}"
                )

        send()

    for op in operations:
        for (token, mode), examples in PLAN.items():
            fuzz(op, token, mode, examples)
    # Random ids find no job: the routes of one job also get cases aimed at a job that exists.
    with Redis.from_url(redis_url) as r:
        existing = r.lrange(QUEUE, 0, 0)
    assert existing, "no generated spec was accepted"
    for op in [op for op in operations if "{job_id}" in op.path]:
        fuzz(op, "right", GenerationMode.POSITIVE, 30, path_parameters={"job_id": existing[0].decode()})

    total = sum(statuses.values())
    print(f"fuzz: {total} requests over {len(operations)} operations: {dict(sorted(statuses.items()))}")
    assert total >= 1000
    assert errors == [], errors[:5]
    # Without the right token nothing got past the check.
    assert {code for (token, code) in statuses if token == "none"} <= {401, 403, 404, 405, 413, 415, 422}
    assert {code for (token, code) in statuses if token == "wrong"} <= {401, 403, 404, 405, 413, 415, 422}
    assert any(code == 201 for (token, code) in statuses if token == "right"), (
        "no generated spec was accepted"
    )
    assert process.proc.poll() is None, "the gateway exited"
    assert httpx.get(base + "/healthz", timeout=10).status_code == 200
    assert httpx.get(base + "/metrics", timeout=10).status_code == 200
    # Whatever was queued is a job a learner can read.
    with Redis.from_url(redis_url) as r:
        queued = r.lrange(QUEUE, 0, -1)
        for job_id in queued:
            JobRecord.model_validate_json(r.hget("asympo:jobs", job_id))
    assert queued
