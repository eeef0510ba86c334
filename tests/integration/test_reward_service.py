"""The reward service as deployed: `python -m services.reward` in a subprocess, real gRPC and HTTP on loopback."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from asympo.proto.v1 import reward_pb2, reward_pb2_grpc
from services.reward.client import (
    AsyncRewardClient,
    RewardClient,
    RewardServiceError,
    RewardServiceUnavailable,
)
from tests.support.service_process import ServiceProcess, grpc_metadata

from ..conftest import REPO

PLUGIN = "tests.support.reward_plugin"
CAP = 100_000  # max_completion_chars given to the service through its environment (default: 262,144)
# 9^(9^(9^9)): sympy evaluates the tower while comparing it; with math-verify's timeouts off this ran for
# over 300 s here (killed by `timeout`, 278 MB RSS) without finishing.
HANG = "The tower is \\boxed{9^{9^{9^{9}}}}"


class Service(ServiceProcess):
    """A `python -m services.reward` subprocess."""

    def __init__(self, *flags: str, env: dict | None = None):
        super().__init__("services.reward", *flags, env=env, start_timeout_s=60)


@pytest.fixture(scope="module")
def service():
    """One service for the module: 2 workers from the flag (the environment says 1), a plugin, a cap from env."""
    svc = Service(
        "--workers", "2", "--default-deadline-ms", "3000",
        env={"ASYMPO_REWARD_WORKERS": "1", "ASYMPO_REWARD_PLUGINS": PLUGIN,
             "ASYMPO_REWARD_MAX_COMPLETION_CHARS": str(CAP)},
    )  # fmt: skip
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def client(service):
    with RewardClient(service.target) as c:
        yield c


# (completion, reference, expected status); 40+ cases the `math` verifier must get right over gRPC.
MATH_CASES = [
    # equal values written differently
    ("The answer is \\boxed{\\frac{1}{2}}", "0.5", "ok"),
    ("\\boxed{0.5}", "\\frac{1}{2}", "ok"),
    ("so we get \\boxed{\\dfrac{3}{4}}.", "3/4", "ok"),
    ("\\boxed{\\tfrac{3}{4}}", "0.75", "ok"),
    ("\\boxed{\\frac{6}{8}}", "\\frac{3}{4}", "ok"),
    ("\\boxed{-0.25}", "-\\frac{1}{4}", "ok"),
    ("\\boxed{-\\frac{2}{3}}", "-2/3", "ok"),
    ("\\boxed{-7}", "-7", "ok"),
    ("\\boxed{3.50}", "3.5", "ok"),
    ("\\boxed{1,000}", "1000", "ok"),
    ("\\boxed{10^{3}}", "1000", "ok"),
    ("\\boxed{1.5 \\times 10^{2}}", "150", "ok"),
    ("\\boxed{0.333333}", "\\frac{1}{3}", "ok"),
    ("\\boxed{50\\%}", "0.5", "ok"),
    ("\\boxed{\\$5}", "5", "ok"),
    ("\\boxed{5 \\text{ cm}}", "5", "ok"),
    # radicals, constants, functions
    ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}", "ok"),
    ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{\\sqrt{2}}{2}", "ok"),
    ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", "ok"),
    ("\\boxed{\\sqrt{2}}", "1.41421356", "ok"),
    ("\\boxed{\\pi}", "\\pi", "ok"),
    ("\\boxed{\\frac{\\pi}{4}}", "\\pi/4", "ok"),
    ("\\boxed{2\\pi}", "6.283185307", "ok"),
    ("\\boxed{\\log_2 8}", "3", "ok"),
    ("\\boxed{\\binom{5}{2}}", "10", "ok"),
    ("\\boxed{5!}", "120", "ok"),
    ("\\boxed{\\infty}", "\\infty", "ok"),
    # expressions, equations, intervals, sets, tuples, matrices
    ("\\boxed{2x+2}", "2(x+1)", "ok"),
    ("\\boxed{(x+1)^2}", "x^2+2x+1", "ok"),
    ("Answer: \\boxed{x^2 - 1}", "(x-1)(x+1)", "ok"),
    ("\\boxed{x=3}", "3", "ok"),
    ("\\boxed{(1, 3]}", "(1,3]", "ok"),
    ("\\boxed{[0, \\infty)}", "[0,\\infty)", "ok"),
    ("\\boxed{\\{1,2\\}}", "\\{2,1\\}", "ok"),
    ("\\boxed{(2, 3)}", "(2,3)", "ok"),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "ok"),
    # where the answer is found
    ("The final answer is $42$.", "42", "ok"),
    ("I think 3, then \\boxed{4}, and later 5", "4", "ok"),  # a box outranks later numbers
    ("I think 3, then \\boxed{4}", "3", "wrong"),
    # wrong answers
    ("\\boxed{\\frac{1}{3}}", "0.5", "wrong"),
    ("\\boxed{0.33}", "\\frac{1}{3}", "wrong"),
    ("\\boxed{2x+1}", "2(x+1)", "wrong"),
    ("\\boxed{x^2+1}", "x^2-1", "wrong"),
    ("\\boxed{7}", "-7", "wrong"),
    ("\\boxed{(1,3)}", "(1,3]", "wrong"),
    ("\\boxed{\\{1,2,3\\}}", "\\{1,2\\}", "wrong"),
    ("\\boxed{51\\%}", "0.5", "wrong"),
    ("\\boxed{4}", "\\sqrt{8}", "wrong"),
    # nothing to read
    ("", "3", "unparsable"),
    ("   \n ", "3", "unparsable"),
    ("I have no idea.", "3", "unparsable"),
    ("lorem ipsum dolor", "\\frac{1}{2}", "unparsable"),
    ("\\boxed{}", "1", "unparsable"),
    ("}}}{{{\\\\", "1", "unparsable"),
    ("x" * (CAP + 1) + " \\boxed{1}", "1", "unparsable"),  # over the length cap: not parsed at all
    # bad references are the data's fault, not the policy's
    ("\\boxed{3}", "", "error"),
    ("\\boxed{3}", "\\frac{", "error"),
]


@pytest.fixture(scope="module")
def math_scores(client):
    """All math cases in one request, scored once."""
    return client.score("math", [c for c, _, _ in MATH_CASES], [r for _, r, _ in MATH_CASES], deadline_s=10)


@pytest.mark.parametrize("index", range(len(MATH_CASES)), ids=[f"{r}|{c[:40]}" for c, r, _ in MATH_CASES])
def test_math_case(math_scores, index):
    completion, reference, status = MATH_CASES[index]
    result = math_scores[index]
    assert result.status == status, (completion, reference, result)
    assert result.reward == (1.0 if status == "ok" else 0.0)


def test_there_are_enough_math_cases():
    assert len(MATH_CASES) >= 40
    assert {s for _, _, s in MATH_CASES} == {"ok", "wrong", "unparsable", "error"}


def test_too_long_completions_say_so(math_scores):
    assert "too long" in math_scores[-3].detail and str(CAP) in math_scores[-3].detail


def test_exact_format_and_user_verifiers(client):
    assert [r.status for r in client.score("exact", ["12", "\\boxed{12}", "13", ""], ["12"] * 4)] == [
        "ok", "ok", "wrong", "unparsable",
    ]  # fmt: skip
    results = client.score("format:boxed:math", ["\\boxed{\\frac{1}{2}}", "1/2"], ["0.5", "0.5"])
    assert [r.status for r in results] == ["ok", "unparsable"]
    assert "\\boxed{}" in results[1].detail
    # The plugin's verifier returns a bare float, which becomes the reward.
    assert client.score("test_length", ["abcd"], ["ab"])[0].reward == 2.0


def long_reasoning(chars: int) -> str:
    """A chain of reasoning, LaTeX and numbers included, of at least `chars` characters."""
    step = "Step {i}: $x_{{{i}}} = \\frac{{{i}}}{{{j}}}$, so the total is {i} + {j} = {k}; next term. "
    text, i = "", 0
    while len(text) < chars:
        text += step.format(i=i, j=i + 2, k=2 * i + 2)
        i += 1
    return text


def test_long_completions_are_scored(client):
    # 64 completions of 64k characters: real reasoning lengths, and together over gRPC's default 4 MiB.
    reasoning = long_reasoning(64 * 1024)
    completions = [f"{reasoning} So the answer is \\boxed{{{42 if i % 2 == 0 else 41}}}." for i in range(64)]
    assert len(reasoning) >= 64 * 1024 and sum(map(len, completions)) > 4 << 20
    for verifier in ["math", "exact", "format:boxed:exact"]:
        results = client.score(verifier, completions, ["42"] * len(completions), deadline_s=10)
        assert [r.status for r in results] == ["ok", "wrong"] * 32, (verifier, results[:2])


def test_empty_request(client):
    assert client.score("math", [], []) == []


def test_health_is_serving(service):
    with grpc.insecure_channel(service.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ["", "asympo.v1.RewardService"]:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as e:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "request_kw, message",
    [
        ({"verifier": "nope"}, "unknown verifier 'nope'"),
        ({"verifier": "format:boxed:nope"}, "unknown verifier 'nope'"),
        ({"verifier": "Bad Name"}, "malformed"),
        ({"verifier": "math", "deadline_ms": -1}, "deadline_ms must be >= 0"),
        ({"verifier": "exact", "items": [reward_pb2.ScoreItem()] * 4097}, "limit is 4096 (max_items)"),
    ],
)
def test_bad_requests_are_invalid_argument(service, request_kw, message):
    with grpc.insecure_channel(service.target) as channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.Score(reward_pb2.ScoreRequest(**request_kw), timeout=10, metadata=grpc_metadata())
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in e.value.details()
    if "verifier" in message:
        assert "exact" in e.value.details() and "math" in e.value.details()


def test_client_errors(service, client):
    with pytest.raises(RewardServiceError) as e:
        client.score("nope", ["1"], ["1"])
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and service.target in str(e.value)
    with pytest.raises(ValueError, match="2 completions but 1 references"):
        client.score("math", ["1", "2"], ["1"])
    with pytest.raises(ValueError, match="not one string"):
        client.score("math", "12", "12")
    with pytest.raises(ValueError, match="deadline_s"):
        client.score("math", ["1"], ["1"], deadline_s=0)


def test_client_names_an_unreachable_target():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens: bound, never listening
        with (
            RewardClient(target, retries=2, backoff_s=0.05) as c,
            pytest.raises(RewardServiceUnavailable) as e,
        ):
            c.score("math", ["1"], ["1"])
    assert target in str(e.value) and "after at most 3 attempts" in str(e.value)


async def test_async_client(service):
    async with AsyncRewardClient(service.target) as c:
        results = await c.score("math", ["\\boxed{\\frac{1}{2}}", "\\boxed{3}"], ["0.5", "0.5"], deadline_s=5)
    assert [r.status for r in results] == ["ok", "wrong"]


def test_the_deadline_covers_scoring_not_waiting(client):
    # Eight 0.3 s items on two workers take ~1.2 s, longer than the 1 s deadline, and still all finish.
    results = client.score("test_sleep", ["0.3"] * 8, [""] * 8, deadline_s=1.0)
    assert [r.status for r in results] == ["ok"] * 8
    (late,) = client.score("test_sleep", ["3"], [""], deadline_s=0.5)
    assert late.status == "timeout" and "0.5 s" in late.detail


def wait_for(predicate, timeout_s=15.0):
    """Poll until predicate() is true."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_hanging_parse_times_out_while_other_requests_complete(service, client):
    wait_for(lambda: service.metric("asympo_reward_pool_workers") == 2)  # healed from earlier tests
    restarts = service.metric("asympo_reward_pool_restarts_total", reason="timeout")
    timeouts = service.metric("asympo_reward_timeouts_total", verifier="math")
    deadline_s = 2.5
    batches = [
        [(f"so \\boxed{{\\frac{{{i}}}{{{j + 2}}}}}", f"{i / (j + 2)!r}") for j in range(8)] for i in range(8)
    ]

    def timed(*args, **kw):
        t0 = time.monotonic()
        return client.score(*args, **kw), time.monotonic() - t0, time.monotonic()

    with ThreadPoolExecutor(len(batches) + 1) as pool:
        start = time.monotonic()
        hang = pool.submit(timed, "math", [HANG], ["5"], deadline_s=deadline_s)
        time.sleep(0.3)  # the hang now holds one of the two workers
        others = [
            pool.submit(timed, "math", [c for c, _ in b], [r for _, r in b], deadline_s=deadline_s)
            for b in batches
        ]
        other_results = [f.result() for f in others]
        (hang_result,), hang_elapsed, _ = hang.result()

    for results, _, finished in other_results:
        assert [r.status for r in results] == ["ok"] * 8, results
        # Finished while the hang still held its worker: nothing waited for it.
        assert finished - start < deadline_s
    assert hang_result.status == "timeout" and hang_result.reward == 0.0
    assert "worker killed" in hang_result.detail
    assert deadline_s <= hang_elapsed < deadline_s + 1.5

    # The pool heals: the killed worker is replaced, counted, and both workers serve again.
    wait_for(lambda: service.metric("asympo_reward_pool_workers") == 2)
    assert service.metric("asympo_reward_pool_restarts_total", reason="timeout") == restarts + 1
    assert service.metric("asympo_reward_timeouts_total", verifier="math") == timeouts + 1
    results = client.score("math", ["\\boxed{2}"] * 6, ["2"] * 6)
    assert [r.status for r in results] == ["ok"] * 6


@pytest.mark.slow
def test_a_crashing_worker_costs_only_its_item(service, client):
    wait_for(lambda: service.metric("asympo_reward_pool_workers") == 2)
    crashes = service.metric("asympo_reward_pool_restarts_total", reason="crash")
    (result,) = client.score("test_crash", ["boom"], [""])
    assert result.status == "error" and "exit code -11" in result.detail
    wait_for(lambda: service.metric("asympo_reward_pool_workers") == 2)
    assert service.metric("asympo_reward_pool_restarts_total", reason="crash") == crashes + 1
    assert [r.status for r in client.score("math", ["\\boxed{1}"] * 4, ["1"] * 4)] == ["ok"] * 4


def test_metrics_endpoint(service, math_scores):
    # A worker killed by an earlier test's timeout is being replaced: wait for the pool to be whole.
    wait_for(lambda: service.metric("asympo_reward_pool_workers") == 2, 60)
    m = service.metrics()
    assert m[("asympo_reward_items_total", (("status", "ok"), ("verifier", "math")))] >= sum(
        s == "ok" for _, _, s in MATH_CASES
    )
    assert m[("asympo_reward_items_total", (("status", "unparsable"), ("verifier", "math")))] >= 1
    assert m[("asympo_reward_item_seconds_count", (("verifier", "math"),))] >= len(MATH_CASES)
    assert m[("asympo_reward_request_seconds_count", ())] >= 1
    assert m[("asympo_reward_requests_total", (("code", "OK"),))] >= 1
    assert ("asympo_reward_pool_restarts_total", (("reason", "timeout"),)) in m
    assert m[("asympo_reward_inflight_items", ())] == 0
    assert m[("asympo_reward_inflight_requests", ())] >= 0
    # The flag (--workers 2) won over the environment (ASYMPO_REWARD_WORKERS=1).
    assert m[("asympo_reward_pool_workers", ())] == 2


def test_logs_are_json_lines(service):
    records = [json.loads(line) for line in service.lines]
    assert records and all({"ts", "level", "service", "logger", "msg"} <= r.keys() for r in records)
    serving = next(r for r in records if r["msg"] == "serving")
    assert serving["service"] == "reward" and "math" in serving["verifiers"]


@pytest.mark.slow
def test_sigterm_finishes_in_flight_work_and_exits_0():
    svc = Service("--workers", "1", "--grace-s", "10", env={"ASYMPO_REWARD_PLUGINS": PLUGIN})
    try:
        with RewardClient(svc.target, retries=0) as c, ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(c.score, "test_sleep", ["3"], [""], 10)
            wait_for(lambda: svc.metric("asympo_reward_inflight_requests") == 1, 30)
            svc.proc.send_signal(signal.SIGTERM)

            def refused() -> bool:
                try:
                    c.score("exact", ["1"], ["1"])
                except RewardServiceError:
                    return True
                return False

            wait_for(refused, 30)  # no new work once stopping
            assert in_flight.result().pop().status == "ok"  # the request in flight still finishes
        assert svc.proc.wait(20) == 0
    finally:
        svc.stop()
    messages = [json.loads(line)["msg"] for line in svc.lines]
    assert "signal received, stopping" in messages and messages[-1] == "stopped"


def test_bad_settings_and_plugins_exit_with_a_message():
    run = [sys.executable, "-m", "services.reward", "--port", "0", "--metrics-port", "-1"]
    bad = subprocess.run([*run, "--workers", "0"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "workers (--workers)" in bad.stderr
    env = {**os.environ, "ASYMPO_REWARD_DEFAULT_DEADLINE_MS": "-5"}
    bad = subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "ASYMPO_REWARD_DEFAULT_DEADLINE_MS" in bad.stderr
    bad = subprocess.run(
        [*run, "--plugins", "no_such_module"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "no_such_module" in bad.stdout


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["importing", "starting workers"])
def test_sigterm_during_start_up_exits_0(phase):
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.reward", "--port", "0", "--metrics-port", "-1", "--workers", "2"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    out = ""
    # "starting": settings read and the signal handlers in place; importing the verifiers comes next and
    # takes seconds. "starting workers": the pool is being started.
    marker = '"msg": "starting"' if phase == "importing" else '"msg": "starting workers"'
    while marker not in out:
        line = proc.stdout.readline()
        assert line, out
        out += line
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=30)
    out += rest
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    assert ("stopped during start-up" in out) == (phase == "starting workers"), out
