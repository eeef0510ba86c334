"""What every reader of a job's streams does with entries it cannot use, against a real Redis: nothing raises,
and each such entry ends in the dead-letter stream once, with its reason, counted as what it is."""

import math

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from asympo.bus import GROUP_LEARNER, GROUP_ROLLOUT, StreamConsumer, decode, dispatch, encode, read_flow
from asympo.bus.codec import EntryError
from asympo.bus.follow import StreamFollower
from asympo.bus.policy_stream import PolicyReader, version_problem
from asympo.bus.skipped import SkipLog
from asympo.proto.v1 import bus_pb2
from services.learner.evaluation import RolloutEvaluation, Round
from tests.support.stream_fuzz import entries

FUZZ = settings(max_examples=40, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
                suppress_health_check=list(HealthCheck))  # fmt: skip
SHA = "cd" * 32  # not the drawn messages' sha256


def drawn(cls, job_id) -> list[dict]:
    """Hostile entries for a stream of `cls`, drawn by hypothesis (the same ones on every run)."""
    out = []

    @FUZZ
    @given(st.data())
    def draw(data):
        out.append(data.draw(entries(cls, job_id)))

    draw()
    return out


async def dead_letters(redis, keys) -> dict[str, dict]:
    """entry id → its dead letter (decoded names; reason, counted, stream, consumer)."""
    out = {}
    for _, fields in await redis.xrange(keys.dead):
        f = {k.decode(): v for k, v in fields.items()}
        out[f["entry_id"].decode()] = {k: f[k].decode() for k in ("stream", "reason", "counted", "consumer")}
    return out


def usable(fields, cls, job_id) -> bool:
    try:
        decode(fields, cls, job_id)
    except EntryError:
        return False
    return True


async def test_a_follower_returns_what_it_can_use_and_dead_letters_the_rest_once(redis, job_keys):
    pushed = [await redis.xadd(job_keys.control, f) for f in drawn(bus_pb2.ControlEvent, job_keys.job_id)]
    pushed = [i.decode() for i in pushed]
    first = StreamFollower(redis, job_keys.control, bus_pb2.ControlEvent, job_keys.job_id,
                           skips=SkipLog(redis, "pod-a"), check=lambda e: None if e.kind == "pause" else "not pause")  # fmt: skip
    read = await first.read_entries()
    dead = await dead_letters(redis, job_keys)
    assert {i for i, _ in read} | set(dead) == set(pushed) and not {i for i, _ in read} & set(dead)
    assert read and all(e.kind == "pause" for _, e in read)
    assert len(dead) > len(read) and all(d["reason"] and d["consumer"] == "pod-a" for d in dead.values())
    assert {d["counted"] for d in dead.values()} == {""} and not await redis.exists(job_keys.flow)
    # Another reader, or this one restarted from the start, meets the same entries and adds nothing.
    again = StreamFollower(redis, job_keys.control, bus_pb2.ControlEvent, job_keys.job_id,
                           skips=SkipLog(redis, "pod-b"), check=first.check)  # fmt: skip
    assert [i for i, _ in await again.read_entries()] == [i for i, _ in read]
    assert await redis.xlen(job_keys.dead) == len(dead)
    # One its reader could not use after all is recorded too, once, whatever the reasons given.
    await first.skip(read[0][0], read[0][1], "refused later")
    await again.skip(read[0][0], read[0][1], "refused again")
    assert await redis.xlen(job_keys.dead) == len(dead) + 1


async def test_the_policy_reader_dead_letters_bad_and_refused_versions_and_falls_back_past_them(
    redis, job_keys
):
    def version(v, **kw):
        return bus_pb2.PolicyVersion(
            job_id=job_keys.job_id, version=v, uri=f"file:///store/v{v}", sha256=SHA, **kw
        )

    reader = PolicyReader(redis, "pod-a")
    assert await reader.newest(job_keys) is None
    real = version(2)
    await redis.xadd(job_keys.policy, encode(real))
    drawn_ids = [
        (await redis.xadd(job_keys.policy, f)).decode() for f in drawn(bus_pb2.PolicyVersion, job_keys.job_id)
    ]
    malformed = [
        version(-1),
        version(1, created_at=math.nan),
        bus_pb2.PolicyVersion(job_id=job_keys.job_id, version=1),
    ]
    malformed_ids = [(await redis.xadd(job_keys.policy, encode(m))).decode() for m in malformed]
    hostile = version(10**15)
    hostile_id = (await redis.xadd(job_keys.policy, encode(hostile))).decode()
    assert await reader.newest(job_keys) == hostile
    dead = await dead_letters(redis, job_keys)
    well_formed = {i for i, (_, f) in zip(drawn_ids, await redis.xrange(job_keys.policy, min=drawn_ids[0]))
                   if usable(f, bus_pb2.PolicyVersion, job_keys.job_id)
                   and version_problem(decode(f, bus_pb2.PolicyVersion)) is None}  # fmt: skip
    assert set(drawn_ids) - well_formed | set(malformed_ids) == set(dead) and len(dead) > 30
    # Refused: dead-lettered once, and the pod looks past it (and past the drawn ones it does not want).
    await reader.refuse(job_keys, hostile, "no such version")
    reason = (await dead_letters(redis, job_keys))[hostile_id]["reason"]
    assert reason == "version refused: no such version"
    assert await reader.newest(job_keys, lambda pv: pv.sha256 == SHA and pv != hostile) == real
    for _ in range(PolicyReader.MAX_REFUSALS - 1):
        await reader.refuse(job_keys, hostile, "no such version")
    assert await reader.newest(job_keys, lambda pv: pv.sha256 == SHA) == real  # given up
    assert await redis.xlen(job_keys.dead) == len(dead) + 1
    await redis.xadd(job_keys.policy, encode(version(3)))
    assert (await reader.newest(job_keys)).version == 3
    # A second pod starts with the newest entries only, and finds them recorded already.
    other = PolicyReader(redis, "pod-b")
    assert (await other.newest(job_keys)).version == 3 and await redis.xlen(job_keys.dead) == len(dead) + 1


async def test_consumer_dead_letters_count_only_the_jobs_own_prompts_as_dropped(redis, job_keys):
    task = bus_pb2.PromptTask(job_id=job_keys.job_id, prompt_id="p0", prompt="1+1=", group_size=8)
    await dispatch(redis, job_keys, [task])
    pushed = [await redis.xadd(job_keys.prompts, f) for f in drawn(bus_pb2.PromptTask, job_keys.job_id)]
    pod = StreamConsumer(redis, job_keys.prompts, GROUP_ROLLOUT, "pod-a", bus_pb2.PromptTask, dead_stream=job_keys.dead,
                         job_id=job_keys.job_id, flow_key=job_keys.flow)  # fmt: skip
    got = []
    while batch := await pod.read(50, 100):
        got += batch
    for d in got:  # what a pod refuses after decoding (here: everything), counted by whose prompt it is
        await pod.dead_letter(d.entry_id, encode(d.message), "refused")
    dead = await dead_letters(redis, job_keys)
    assert (
        len(dead) == len(pushed) + 1
        and (await redis.xpending(job_keys.prompts, GROUP_ROLLOUT))["pending"] == 0
    )
    own = [i for i, d in dead.items() if d["counted"] == "dropped:dead"]
    assert own == [got[0].entry_id] and got[0].message.prompt_id == "p0"
    flow = await read_flow(redis, job_keys)
    assert (flow.dispatched, flow.dropped["dead"], flow.foreign) == (1, 1, len(pushed))
    # The learner's side: undecodable groups and groups of other jobs are no prompts of the job either.
    learner = StreamConsumer(redis, job_keys.groups, GROUP_LEARNER, "rank0", bus_pb2.ScoredGroup, dead_stream=job_keys.dead,
                             job_id=job_keys.job_id, flow_key=job_keys.flow)  # fmt: skip
    groups = drawn(bus_pb2.ScoredGroup, job_keys.job_id)
    for fields in groups:
        await redis.xadd(job_keys.groups, fields)
    readable = []
    while batch := await learner.read(50, 100):
        readable += batch
    assert len(readable) == sum(usable(f, bus_pb2.ScoredGroup, job_keys.job_id) for f in groups)
    flow = await read_flow(redis, job_keys)
    assert flow.foreign == len(pushed) + len(groups) - len(readable) and flow.dropped["dead"] == 1


def result(version, chunk, n, **kw):
    fields = {"eval_id": f"v{version}-{chunk}", "version": version, "served_version": version,
              "greedy_rewards": [1.0] * n, "chunks": 7, "pod": "pod-a", "seconds": 1.0}  # fmt: skip
    return bus_pb2.EvalResult(**{**fields, **kw})


async def test_the_learner_records_an_evaluation_from_its_chunks_and_dead_letters_unknown_results(
    redis, job_keys, example_spec
):
    ev = RolloutEvaluation(redis, job_keys.job_id, example_spec, None, None)
    sizes = ev.chunk_sizes
    assert sum(sizes) == example_spec.task.heldout_size and len(sizes) == 7
    ev.rounds[3] = Round(3, 30, len(sizes), 0)
    hostile = [
        result(4, 0, sizes[0]),  # a version nobody asked to evaluate
        result(3, 7, sizes[0]),  # a chunk beyond the evaluation
        result(3, 0, 0),  # no rewards: would divide by zero
        result(3, 1, sizes[1], greedy_rewards=[math.nan] * sizes[1]),
        result(3, 1, sizes[1], sample_means=[1.0]),
        result(3, 2, sizes[2], served_version=-5),
        result(3, 2, sizes[2], chunks=1),
        result(10**15, 0, 1, eval_id="v0-0"),
    ]
    ids = []
    for r in hostile + [result(3, i, n) for i, n in enumerate(sizes)]:
        r.job_id = job_keys.job_id
        ids.append((await redis.xadd(job_keys.eval_results, encode(r))).decode())
    for fields in drawn(bus_pb2.EvalResult, job_keys.job_id):
        ids.append((await redis.xadd(job_keys.eval_results, fields)).decode())
    records = await ev.collect()
    assert [(r["version"], r["heldout_accuracy"], r["heldout_prompts"]) for r in records] == [(3, 1.0, 200)]
    dead = await dead_letters(redis, job_keys)
    assert set(ids[: len(hostile)]) <= set(dead) and all(d["reason"] for d in dead.values())
    assert dead[ids[0]]["reason"] == "no evaluation of version 4 is awaited"
    assert set(ids) - set(dead) == set(ids[len(hostile) : len(hostile) + len(sizes)])
