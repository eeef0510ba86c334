"""The whole local stack as `asympo up` starts it: real Redis, reward service, two vLLM rollout pods,
the learner and the gateway as processes on loopback; jobs over REST only. (A long job through the
stack with every part of it killed on the way is tests/e2e/test_chaos.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import httpx
import pytest

from asympo.cli.client import GatewayClient
from asympo.cli.processes import group_members
from asympo.jobs.records import FINAL_STATES
from asympo.runtime.ports import free_port
from tests.support.local_stack import asympo, running_stack, wait
from tests.support.poison_specs import MAX_422_BYTES, POISON_SPECS

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "examples" / "jobs" / "arith-tiny.yaml"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_cache, tiny_model_path):
    home = tmp_path_factory.mktemp("stack") / ".asympo"
    # The gateway pinned to one CPU: `--cpus` is checked on a service whose speed no test depends on.
    pinned = ("--cpus", "gateway=0")
    with running_stack(
        home, tiny_cache, "--rollout-pods", "2", "--rollout-flag=--claim-idle-s=5", *pinned
    ) as (
        s,
        client,
    ):
        yield s, client, home


def submit(client: GatewayClient, **overrides) -> str:
    from asympo.jobs.spec import JobSpec

    spec = JobSpec.load(JOB).with_overrides(overrides)
    return client.submit(spec.to_yaml())["job_id"]


def test_up_is_healthy_and_idempotent(stack):
    s, client, home = stack
    status = s.status()["processes"]
    assert {"redis", "reward", "rollout", "rollout-1", "learner", "gateway"} <= set(status)
    assert all(p["running"] for p in status.values()), status
    assert client.healthy()
    before = {n: p["pid"] for n, p in status.items()}
    assert os.sched_getaffinity(before["gateway"]) == {0}
    assert os.sched_getaffinity(before["learner"]) == os.sched_getaffinity(0)  # not pinned
    os.killpg(before["reward"], signal.SIGKILL)  # a crashed service ...
    time.sleep(1.0)
    again = asympo(home, "up", "--gateway-port", str(s._ports()["gateway"]["port"]), "--rollout-pods", "2")
    assert again.returncode == 0, again.stdout + again.stderr
    after = {n: p["pid"] for n, p in s.status()["processes"].items()}
    assert after["reward"] != before["reward"]  # ... is restarted by `asympo up`
    assert {n: p for n, p in after.items() if n != "reward"} == {
        n: p for n, p in before.items() if n != "reward"
    }
    out = asympo(home, "status")
    assert out.returncode == 0 and "redis://" in out.stdout and "gateway" in out.stdout


def test_pause_resume_and_cancel_over_rest(stack):
    s, client, home = stack
    job_id = submit(client, **{"algorithm.steps": 1000, "eval.every": 1000})
    wait(client, job_id, lambda j: j["state"] == "running" and j["step"] >= 3)
    client.control(job_id, "pause")
    paused = wait(client, job_id, lambda j: j["state"] == "paused", 60)
    time.sleep(3)
    # The record shows committed steps: when the pause came, one step's publication may still have been
    # in flight and the next step training; both finish, nothing after them.
    assert client.job(job_id)["step"] <= paused["step"] + 2
    client.control(job_id, "resume")
    wait(client, job_id, lambda j: j["state"] == "running" and j["step"] >= paused["step"] + 3, 120)
    client.control(job_id, "cancel")
    job = wait(client, job_id, lambda j: j["state"] == "cancelled", 60)
    assert job["step"] < 1000


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query in the Grafana dashboard, except external exporters'."""
    board = json.loads((REPO / "deploy/grafana/dashboards/asympo.json").read_text())

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    return [(p["title"], t["expr"]) for p in panels(board["panels"]) for t in p.get("targets", [])
            if t.get("expr") and "DCGM_" not in t["expr"]]  # fmt: skip


def test_prometheus_answers_every_dashboard_query(stack, tmp_path):
    """Debian's prometheus scrapes the running stack; every dashboard query has data after a short job."""
    s, client, home = stack
    ports = s._ports()
    running = s.status()["processes"]
    jobs = {
        "asympo-gateway": [ports["gateway"]["port"]],
        "asympo-reward": [ports["reward"]["metrics_port"]],
        "asympo-learner": [ports["learner"]["metrics_port"]],
        "asympo-rollout": [p["metrics_port"] for n, p in ports.items() if n.startswith("rollout") and running[n]["running"]],
    }  # fmt: skip
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ps]}]}
            for job, ps in jobs.items()
        ],  # fmt: skip
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    port = free_port()
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"),
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _get(f"{api}/-/ready"):
            assert prom.poll() is None and time.monotonic() < deadline, (
                tmp_path / "prometheus.log"
            ).read_text()
            time.sleep(0.5)
        job_id = submit(client, **{"algorithm.steps": 20, "eval.every": 10})
        job = wait(client, job_id, lambda j: j["state"] in FINAL_STATES)
        assert job["state"] == "succeeded", job["message"]
        # Every step says where its time went, on the learner and on the pods, and which version it made.
        steps = [r for r in client.metrics(job_id, last=1000) if r.get("prompt_ids") is not None]
        assert [r["version"] for r in steps] == list(range(1, 21))
        for r in steps:
            learner, pods = r["timeline"]["learner"], r["timeline"]["pods"]
            assert {
                "wait_groups",
                "train",
                "snapshot",
                "save",
                "hash",
                "fsync",
                "announce",
            } <= learner.keys(), r
            assert learner["train"] > 0 and pods["generate"] > 0 and pods["score"] > 0, r
        assert any(r["timeline"]["pods"]["reload"] > 0 for r in steps), "no group carried a reload's time"
        # Scrapes go on after the last step; a busy machine makes them late, so wait for the data.
        deadline = time.monotonic() + 120
        while True:
            empty = []
            for title, expr in dashboard_queries():
                query = expr.replace("$__rate_interval", "2m").replace("$pod", ".*")
                answer = json.loads(_get(f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": query})))
                assert answer["status"] == "success", (title, expr, answer)
                if not answer["data"]["result"]:
                    empty.append((title, expr))
            if not empty or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert not empty, empty
        assert len(dashboard_queries()) >= 40
    finally:
        prom.terminate()
        prom.wait(30)


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read()
    except OSError:
        return None


def test_poison_specs_get_short_422s_and_the_next_job_runs(stack):
    s, client, home = stack
    before = {n: p["pid"] for n, p in s.status()["processes"].items()}
    auth = {"Authorization": f"Bearer {s.token()}"}
    for name, kind, body, field in POISON_SPECS:
        r = httpx.post(
            s.gateway_url() + "/v1/jobs", content=body, headers={**auth, "Content-Type": kind}, timeout=30
        )
        assert r.status_code == 422 and len(r.content) <= MAX_422_BYTES, (name, r.status_code, len(r.content))
        assert field in [p["field"] for p in r.json()["detail"]["problems"]], (name, r.text[:300])
    job_id = submit(client, **{"algorithm.steps": 4, "eval.every": 1000})
    assert wait(client, job_id, lambda j: j["state"] in FINAL_STATES, 600)["state"] == "succeeded"
    after = s.status()["processes"]
    assert {n: p["pid"] for n, p in after.items()} == before and all(p["running"] for p in after.values())


def test_compare_tells_naive_from_asympo_through_the_stack(stack, tmp_path):
    """The paper's comparison as a user runs it: at max_staleness 8 (what the pods produce: ~8) naive ends
    below its warm start or 15+ points under ASymPO, which learns; 3 seeds, 200 steps each (~3 min)."""
    s, client, home = stack
    out = tmp_path / "compare"
    args = ("--loss", "asympo,naive", "--staleness", "8", "--seeds", "0,1,2", "--set", "eval.every=200")
    proc = asympo(home, "compare", str(JOB), *args, "--out", str(out), "--no-progress", timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((out / "compare.json").read_text())
    runs = data["runs"]
    assert [(r["loss"], r["seed"], r["state"]) for r in runs] == [
        (loss, seed, "succeeded") for loss in ("asympo", "naive") for seed in (0, 1, 2)
    ]
    for r in runs:
        hist = {int(k): v for k, v in r["staleness_histogram"].items()}
        assert max(hist) <= 8 and sum(hist.values()) == 200 * 16, (
            hist
        )  # every step's groups, within the bound
        assert r["staleness_mean"] >= 4, hist  # the pods ran ahead: the samples really were stale
        assert len([x for x in r["records"] if x.get("prompt_ids")]) == 200  # per-step records kept
    by = {a["loss"]: a for a in data["settings"]}
    warm, asympo_acc, naive = by["asympo"]["initial_accuracy"], by["asympo"]["final_accuracy"], by["naive"]
    assert naive["final_accuracy"] < warm or naive["final_accuracy"] <= asympo_acc - 0.15, data["settings"]
    assert asympo_acc >= warm + 0.10, data["settings"]  # fails when the learner trains naive for "asympo"
    assert "| naive | 8 |" in (out / "compare.md").read_text()
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_down_leaves_no_process_of_the_stack(stack):
    s, client, home = stack
    groups = {n: p["pid"] for n, p in s.status()["processes"].items() if p["pid"]}
    out = asympo(home, "down", timeout=300)
    assert out.returncode == 0, out.stderr
    assert all(not group_members(pgid) for pgid in groups.values()), {
        n: group_members(g) for n, g in groups.items()
    }
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert str(home) not in ps, [line for line in ps.splitlines() if str(home) in line]
    assert s.status()["processes"] == {}
