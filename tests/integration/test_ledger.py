"""The learner's bookkeeping on a real Redis: the lease and its fencing token, dispatch and ACK counts that
stay right when a reply is lost and the command re-sent, the reconciler, trimming and roll-backs."""

from __future__ import annotations

import asyncio

import pytest

from asympo.bus import (
    GROUP_LEARNER,
    GROUP_ROLLOUT,
    Fenced,
    JobLease,
    Ledger,
    PositionMoved,
    StreamConsumer,
    connect,
    dispatch,
    encode,
    read_flow,
    reconcile,
)
from asympo.bus.fence import Grant, Held, check_fence, lease_state
from asympo.bus.ledger import drop_records
from asympo.bus.trim import trim_consumed
from asympo.proto.v1 import bus_pb2
from tests.support.redis_proxy import RedisProxy


def task(keys, i):
    return bus_pb2.PromptTask(job_id=keys.job_id, prompt_id=f"p{i}", prompt=f"{i}+{i}=", reference=str(2 * i))


def group(keys, pid):
    return bus_pb2.ScoredGroup(
        job_id=keys.job_id, prompt_id=pid, completions=[bus_pb2.Completion(reward=1.0)]
    )


def pod(redis, keys, name="pod"):
    return StreamConsumer(
        redis, keys.prompts, GROUP_ROLLOUT, name, bus_pb2.PromptTask, dead_stream=keys.dead, job_id=keys.job_id,
        flow_key=keys.flow,
    )  # fmt: skip


def learner(redis, keys, name="rank0"):
    return StreamConsumer(
        redis, keys.groups, GROUP_LEARNER, name, bus_pb2.ScoredGroup, dead_stream=keys.dead, job_id=keys.job_id,
        flow_key=keys.flow, claim_idle_s=10**7,
    )  # fmt: skip


async def groups_ready(redis, keys, n: int) -> list:
    """Dispatch n prompts, turn them into groups as a pod would, read them as the learner."""
    await dispatch(redis, keys, [task(keys, i) for i in range(n)])
    p = pod(redis, keys)
    tasks = await p.read(n, 100)
    await p.ack_and_publish(
        [d.entry_id for d in tasks], keys.groups, [group(keys, d.message.prompt_id) for d in tasks]
    )
    return await learner(redis, keys).read(n, 100)


async def test_a_second_learner_waits_and_the_first_is_fenced_once_it_takes_over(redis, job_keys):
    first = JobLease(redis, job_keys.lease, ttl_s=0.5, holder="host-a/1")
    second = JobLease(redis, job_keys.lease, ttl_s=0.5, holder="host-b/2")
    granted = await first.acquire()
    assert isinstance(granted, Grant) and granted.crashes == 0
    held = await second.acquire()
    assert isinstance(held, Held) and held.holder == "host-a/1"  # a live holder's job is not shared
    await dispatch(redis, job_keys, [task(job_keys, 0)], fence=first.fence)
    # The first learner stops renewing (partitioned, stalled): once its lease expires the second takes it.
    deadline = asyncio.get_running_loop().time() + 10
    while isinstance(taken := await second.acquire(), Held):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)
    assert taken.token > granted.token and taken.crashes == 1  # the first never released it
    # From now on every write of the first learner is refused, Redis-side.
    with pytest.raises(Fenced):
        await dispatch(redis, job_keys, [task(job_keys, 1)], fence=first.fence)
    with pytest.raises(Fenced):
        await Ledger(redis, job_keys, first.fence).publish(
            job_keys.policy, [bus_pb2.PolicyVersion(job_id=job_keys.job_id)]
        )
    with pytest.raises(Fenced):
        await check_fence(redis, first.fence)
    with pytest.raises(Fenced):
        await first.renew()
    assert (await read_flow(redis, job_keys)).dispatched == 1 and await redis.xlen(job_keys.policy) == 0
    await dispatch(redis, job_keys, [task(job_keys, 1)], fence=second.fence)
    assert (await read_flow(redis, job_keys)).dispatched == 2


async def test_the_restart_budget_counts_only_learners_that_never_released(redis, job_keys):
    lease = JobLease(redis, job_keys.lease, ttl_s=30, holder="host/1")
    await lease.acquire()
    await lease.release(clean=True)  # SIGTERM: a clean stop
    assert (await lease.acquire()).crashes == 0
    # Killed: nothing released. The next learner (same host, pid gone) takes over at once and counts it.
    restarted = JobLease(redis, job_keys.lease, ttl_s=30, holder="host/2")
    assert isinstance(await restarted.acquire(), Held)
    assert (await restarted.acquire(take_from="host/1")).crashes == 1
    again = JobLease(redis, job_keys.lease, ttl_s=30, holder="host/3")
    assert (await again.acquire(take_from="host/2")).crashes == 2
    assert (await lease_state(redis, job_keys.lease))["crashes"] == "2"


async def test_dispatch_moves_the_position_once_even_when_sent_twice(redis, job_keys):
    tasks = [task(job_keys, i) for i in range(4)]
    assert await dispatch(redis, job_keys, tasks, position=0) == 4
    assert await dispatch(redis, job_keys, tasks, position=0) == 4  # the same dispatch again: done already
    with pytest.raises(PositionMoved):
        await dispatch(redis, job_keys, tasks[:2], position=0)  # someone else's dispatch from 0
    assert await redis.xlen(job_keys.prompts) == 4 and (await read_flow(redis, job_keys)).dispatched == 4


async def test_writes_whose_reply_is_lost_are_counted_once(redis_server, job_keys):
    """A proxy drops the connection after each write reaches Redis; redis-py re-sends it. The
    bookkeeping scripts count once, where a plain MULTI/EXEC of the same effects counts twice."""
    with RedisProxy(redis_server.url) as proxy:
        redis = connect(proxy.url)
        try:
            # The hazard itself: a transaction re-run after a lost EXEC reply.
            proxy.lose_reply_after(b"EXEC")
            async with redis.pipeline(transaction=True) as pipe:
                pipe.xadd(job_keys.control, {"x": "1"})
                pipe.hincrby(job_keys.flow, "naive", 1)
                await pipe.execute()
            assert proxy.wait_lost()
            assert (
                int(await redis.hget(job_keys.flow, "naive")) == 2 and await redis.xlen(job_keys.control) == 2
            )

            for step in ("acquire", "dispatch", "publish", "dead_letter", "commit", "discard", "announce",
                         "record"):  # fmt: skip
                proxy.lose_reply_after(b"EVAL")
                if step == "acquire":
                    grant = await JobLease(redis, job_keys.lease, ttl_s=30).acquire()
                elif step == "dispatch":
                    await dispatch(redis, job_keys, [task(job_keys, i) for i in range(6)], position=0)
                elif step == "publish":
                    p = pod(redis, job_keys)
                    tasks = await p.read(5, 100)
                    await p.ack_and_publish([d.entry_id for d in tasks], job_keys.groups,
                                            [group(job_keys, d.message.prompt_id) for d in tasks])  # fmt: skip
                elif step == "dead_letter":
                    (last,) = await p.read(1, 100)
                    await p.dead_letter(last.entry_id, encode(last.message), "poison")
                elif step == "commit":
                    groups = await learner(redis, job_keys).read(5, 100)
                    await Ledger(redis, job_keys).commit_step([d.entry_id for d in groups[:3]], {"step": 1})
                elif step == "discard":
                    await Ledger(redis, job_keys).discard(
                        [(d.entry_id, d.message.prompt_id) for d in groups[3:]], "stale", 1
                    )
                elif step == "announce":
                    pv = bus_pb2.PolicyVersion(job_id=job_keys.job_id, version=1)
                    announced = await Ledger(redis, job_keys).publish(job_keys.policy, [pv])
                else:
                    recorded = await Ledger(redis, job_keys).append_record({"eval": True, "version": 1})
                assert proxy.wait_lost(), step
            assert proxy.lost == 9
            assert (grant.token, grant.crashes) == (1, 0)  # not a second token, not a crash of its own
            flow = await read_flow(redis, job_keys)
            assert (
                flow.dispatched,
                flow.trained,
                flow.dropped["dead"],
                flow.dropped["stale"],
                flow.in_flight,
            ) == (6, 3, 1, 2, 0)
            assert await redis.xlen(job_keys.prompts) == 6 and await redis.xlen(job_keys.groups) == 5
            assert await redis.xlen(job_keys.dead) == 1
            # Appends are found again, not repeated: one version announced, one record, their own ids.
            assert [i.decode() for i, _ in await redis.xrange(job_keys.policy)] == announced
            assert [i.decode() for i, _ in await redis.xrange(job_keys.steps)][1:] == [recorded]
            assert [r["prompt_ids"] for r in await drop_records(redis, job_keys)] == [["p3", "p4"]]
        finally:
            await redis.aclose()


async def test_reconcile_counts_prompts_no_stream_holds_as_lost(redis, job_keys):
    groups = await groups_ready(redis, job_keys, 4)
    await Ledger(redis, job_keys).commit_step([d.entry_id for d in groups[:2]], {"step": 1})
    await dispatch(redis, job_keys, [task(job_keys, 9)])  # one more, not picked up by any pod yet
    assert await reconcile(redis, job_keys, Ledger(redis, job_keys).fence) == (
        3,
        3,
    )  # 2 pending groups + 1 task
    # A counter that drifted (e.g. writes lost with a Redis that lost its last second) is repaired.
    await redis.hincrby(job_keys.flow, "dispatched", 5)
    assert await reconcile(redis, job_keys, Ledger(redis, job_keys).fence) == (8, 3)
    flow = await read_flow(redis, job_keys)
    assert flow.in_flight == 3 and flow.dropped["lost"] == 5


async def test_trimming_removes_finished_entries_and_keeps_pending_ones(redis, job_keys):
    groups = await groups_ready(redis, job_keys, 6)
    fence = Ledger(redis, job_keys).fence
    assert await trim_consumed(redis, job_keys.prompts, GROUP_ROLLOUT, fence) == 6  # every task is done
    assert await redis.xlen(job_keys.prompts) == 0
    await Ledger(redis, job_keys).commit_step(
        [groups[0].entry_id, groups[1].entry_id, groups[3].entry_id], {"step": 1}
    )
    assert await trim_consumed(redis, job_keys.groups, GROUP_LEARNER, fence) == 2  # up to the oldest pending
    left = [eid.decode() for eid, _ in await redis.xrange(job_keys.groups)]
    assert left == [groups[i].entry_id for i in (2, 3, 4, 5)]
    await Ledger(redis, job_keys).commit_step([groups[i].entry_id for i in (2, 4, 5)], {"step": 2})
    assert await trim_consumed(redis, job_keys.groups, GROUP_LEARNER, fence) == 4
    assert await redis.xlen(job_keys.groups) == 0
    # New entries after a trim are untouched until they are done.
    await dispatch(redis, job_keys, [task(job_keys, 7)])
    assert await trim_consumed(redis, job_keys.prompts, GROUP_ROLLOUT, fence) == 0
    assert await redis.xlen(job_keys.prompts) == 1


async def test_a_roll_back_moves_its_prompts_to_dropped_once(redis, job_keys):
    groups = await groups_ready(redis, job_keys, 4)
    ledger = Ledger(redis, job_keys)
    await ledger.commit_step([d.entry_id for d in groups[:2]], {"step": 1, "prompt_ids": ["p0", "p1"]})
    await ledger.commit_step([d.entry_id for d in groups[2:]], {"step": 2, "prompt_ids": ["p2", "p3"]})
    second = (await redis.xrange(job_keys.steps))[1][0].decode()
    for _ in range(2):  # a re-sent roll-back changes nothing
        await ledger.roll_back([second], ["p2", "p3"], {"rollback": True, "step": 1})
    flow = await read_flow(redis, job_keys)
    assert (flow.trained, flow.dropped["rolled_back"], flow.in_flight) == (2, 2, 0)
    steps = [f for _, f in await redis.xrange(job_keys.steps)]
    assert len(steps) == 2 and b"rollback" in steps[1][b"json"]
    assert [(r["reason"], r["prompt_ids"]) for r in await drop_records(redis, job_keys)] == [
        ("rolled_back", ["p2", "p3"])
    ]
