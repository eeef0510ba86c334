"""Hostile entries in every stream of a running job: no service falls over, every entry is either consumed or
dead-lettered with a reason, no pod serves weights the learner did not publish, and the job succeeds.

The entries are drawn by hypothesis (derandomized: the same draws on every run): messages of each stream's
type with wild field values, valid encodings of another message type, and field maps that are no entry.
While the job is paused, valid-looking announcements of weights that do not exist or do not match, and a
cancel the job record does not confirm, must be refused by the pod with a dead letter.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path

import pytest
import redis as redis_sync
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from asympo.bus import GROUP_LEARNER, GROUP_ROLLOUT, JobKeys, connect, decode, encode
from asympo.bus.codec import EntryError
from asympo.bus.flow import FOREIGN, read_flow
from asympo.bus.policy_stream import version_problem
from asympo.jobs.records import FINAL_STATES
from asympo.jobs.spec import JobSpec
from asympo.proto.v1 import bus_pb2
from services.rollout.entry_checks import control_problem
from tests.support.local_stack import running_stack, wait
from tests.support.stream_fuzz import entries

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "examples" / "jobs" / "arith-tiny.yaml"
PER_STREAM = 80
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# JobKeys attribute → (message type, consumer group or None for streams read without one)
STREAMS = {
    "prompts": (bus_pb2.PromptTask, GROUP_ROLLOUT),
    "groups": (bus_pb2.ScoredGroup, GROUP_LEARNER),
    "policy": (bus_pb2.PolicyVersion, None),
    "control": (bus_pb2.ControlEvent, None),
    "evals": (bus_pb2.EvalTask, GROUP_ROLLOUT),
    "eval_results": (bus_pb2.EvalResult, None),
}


def drawn(cls, job_id: str) -> list[dict]:
    """PER_STREAM hostile entries for a stream of `cls`, drawn by hypothesis."""
    out = []

    @settings(max_examples=PER_STREAM, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(st.data())
    def draw(data):
        out.append(data.draw(entries(cls, job_id)))

    draw()
    return out


def dead_letters(r, keys: JobKeys) -> dict[tuple[str, str], dict]:
    """(stream, entry id) → the dead letter's fields, decoded."""
    out = {}
    for _, fields in r.xrange(keys.dead):
        f = {k.decode(): v.decode(errors="replace") for k, v in fields.items() if k != b"pb"}
        out[(f["stream"], f["entry_id"])] = f
    return out


def consumed(r, stream: str, group: str, entry_id: str) -> bool:
    """Delivered to the group (its last-delivered id is past the entry) and no longer pending."""
    info = {g["name"].decode(): g for g in r.xinfo_groups(stream)}[group]
    last = tuple(map(int, info["last-delivered-id"].decode().split("-")))
    return last >= tuple(map(int, entry_id.split("-"))) and not r.xpending_range(
        stream, group, entry_id, entry_id, 1
    )


def readable(fields: dict, cls, job_id: str):
    try:
        return decode(fields, cls, job_id)
    except EntryError:
        return None


def push_until_refused(r, keys: JobKeys, make, mine: set[str], dead_wait_s: float = 90) -> str:
    """Push the announcement make(newest version the learner published) until the pod refuses one; its id.

    A version the learner publishes after it (the step in flight when the job paused) makes the pod look
    past it, so then another is pushed. `mine`: the ids of the policy entries the test pushed (this adds to it)."""
    for _ in range(3):
        learners = (f for i, f in r.xrevrange(keys.policy, count=1000) if i.decode() not in mine)
        newest = decode(next(learners), bus_pb2.PolicyVersion)
        entry_id = r.xadd(keys.policy, encode(make(newest))).decode()
        mine.add(entry_id)
        deadline = time.monotonic() + dead_wait_s
        while time.monotonic() < deadline:
            if (keys.policy, entry_id) in dead_letters(r, keys):
                return entry_id
            if r.xrevrange(keys.policy, count=1)[0][0].decode() != entry_id:
                break  # superseded before the pod looked: try again
            time.sleep(0.5)
    raise AssertionError("the pod never refused a hostile announcement")


def hostile_versions(r, keys: JobKeys, mine: set[str]) -> list[str]:
    """Announcements a pod must refuse: weights that do not match, a version the store does not have."""

    def mismatch(newest):
        return bus_pb2.PolicyVersion(
            job_id=keys.job_id, version=newest.version + 1, uri=newest.uri, bytes=newest.bytes, step=newest.step + 1,
            sha256=hashlib.sha256(b"not these weights").hexdigest(), created_at=time.time(),
        )  # fmt: skip

    def missing(newest):
        return bus_pb2.PolicyVersion(
            job_id=keys.job_id, version=10**15, uri=newest.uri.rsplit("/", 1)[0] + "/v1000000000000000",
            sha256=hashlib.sha256(b"no such version").hexdigest(), created_at=time.time(),
        )  # fmt: skip

    return [push_until_refused(r, keys, mismatch, mine), push_until_refused(r, keys, missing, mine)]


def test_hostile_entries_in_every_stream_leave_the_services_and_the_job_standing(
    tmp_path, tiny_cache, tiny_model_path
):
    t0 = time.monotonic()
    home = tmp_path / ".asympo"
    with running_stack(home, tiny_cache, "--rollout-flag=--claim-idle-s=5") as (stack, client):
        before = {n: p["pid"] for n, p in stack.status()["processes"].items()}
        spec = JobSpec.load(JOB).with_overrides(
            {"algorithm.steps": 30, "eval.every": 1000, "eval.engine": "rollout"}
        )
        job_id = client.submit(spec.to_yaml())["job_id"]
        keys = JobKeys(job_id)
        r = redis_sync.Redis.from_url(stack.status()["redis_url"])
        draws = {name: drawn(cls, job_id) for name, (cls, _) in STREAMS.items()}
        wait(client, job_id, lambda j: j["state"] == "running" and j["step"] >= 2, 600)
        t_push = time.monotonic()
        pushed: dict[str, list[tuple[str, dict]]] = {name: [] for name in STREAMS}
        for i in range(PER_STREAM):  # interleaved, as garbage from many writers would arrive
            for name, fields in ((n, d[i]) for n, d in draws.items() if i < len(d)):
                pushed[name].append((r.xadd(getattr(keys, name), fields).decode(), fields))
        print(f"pushed {sum(map(len, pushed.values()))} drawn entries in {time.monotonic() - t_push:.1f} s")

        client.control(job_id, "pause")
        wait(client, job_id, lambda j: j["state"] == "paused", 120)
        mine = {entry_id for entry_id, _ in pushed["policy"]}
        refused = hostile_versions(r, keys, mine)
        cancel = r.xadd(keys.control, encode(bus_pb2.ControlEvent(job_id=job_id, kind="cancel"))).decode()
        client.control(job_id, "resume")
        job = wait(client, job_id, lambda j: j["state"] in FINAL_STATES, 600)
        assert job["state"] == "succeeded", job["message"]

        # No service crashed or restarted, and the gateway still answers.
        after = stack.status()["processes"]
        assert all(p["running"] for p in after.values()) and {n: p["pid"] for n, p in after.items()} == before
        assert client.healthy()

        dead = dead_letters(r, keys)
        for entry_id in refused:
            assert dead[(keys.policy, entry_id)]["reason"].startswith("version refused: "), dead[
                (keys.policy, entry_id)
            ]
        assert "job record says" in dead[(keys.control, cancel)]["reason"]
        announced = [
            readable(f, bus_pb2.PolicyVersion, job_id)
            for i, f in r.xrange(keys.policy)
            if i.decode() not in mine
        ]
        learners = {(v.version, v.sha256) for v in announced}
        records = [json.loads(f[b"json"]) for _, f in r.xrange(keys.steps)]
        recorded = {rec["version"] for rec in records if rec.get("eval")}
        report = {}
        for name, (cls, group) in STREAMS.items():
            stream, counts = getattr(keys, name), {"dead": 0, "consumed": 0}
            for entry_id, fields in pushed[name]:
                letter = dead.get((stream, entry_id))
                if letter is not None:
                    assert letter["reason"], letter
                    if group is not None and name in ("prompts", "groups"):
                        assert letter["counted"] == FOREIGN, letter  # none of them is a prompt of the job
                    counts["dead"] += 1
                    continue
                message = readable(fields, cls, job_id)
                if group is not None:
                    assert consumed(r, stream, group, entry_id), (name, entry_id, fields)
                elif name == "control":  # followed: a cancel the record does not confirm never is
                    assert message and message.kind != "cancel" and not control_problem(message, None), (
                        message
                    )
                elif name == "eval_results":  # a twin of a recorded evaluation's chunk changes nothing
                    assert message is not None and message.version in recorded, message
                else:  # well-formed, then passed over for a newer one or not newer than the one served
                    assert message is not None and version_problem(message) is None, message
                counts["consumed"] += 1
            report[name] = counts

        # The pod serves what the learner published, and the counters still add up.
        (pod,) = [json.loads(v) for v in r.hgetall(keys.pods).values()]
        assert (pod["served_version"], pod["weights_sha256"]) in learners, pod
        assert pod["served_version"] == job["version"], (pod, job["version"])
        flow = asyncio.run(flow_of(stack.status()["redis_url"], keys))
        foreign = sum(1 for d in dead.values() if d.get("counted") == FOREIGN)
        assert flow.foreign == foreign and flow.dispatched == flow.trained + sum(flow.dropped.values()), flow
        assert [rec for rec in records if rec.get("final")][0]["heldout_accuracy"] is not None
        print(f"stream fuzz: {report}; hostile versions refused: {len(refused)}; {flow}; "
              f"{time.monotonic() - t0:.0f} s in all")  # fmt: skip


async def flow_of(url: str, keys: JobKeys):
    client = connect(url)
    try:
        return await read_flow(client, keys)
    finally:
        await client.aclose()
