"""Bus round trip (XADD → XREADGROUP → XACK) for realistic ScoredGroups, asympo.bus vs raw redis-py.

Both sides move the same serialized bytes through the same Redis server in the same run, in batches
(one transaction of XADDs, one read, one XACK), so the ratio is the cost of the bus layer itself:
decoding and checking entries, reclaiming idle entries before each read, transactions.

    python benchmarks/bus.py [--groups 2000] [--batch 16] [--repeats 5] [--out benchmarks/results/bus.json]

`--appendfsync everysec|always --redis-dir DIR` runs the same against a Redis writing its AOF under DIR
with that fsync policy (the local stack's durability choice; DIR should be on the disk the stack's home
is on, since fsync costs nothing on a tmpfs).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import timeit
from pathlib import Path

import redis
from results_io import machine, write_result

from asympo.bus import GROUP_LEARNER, JobKeys, StreamConsumer, connect, decode, encode, publish
from asympo.bus.local_redis import start_redis
from asympo.proto.v1 import bus_pb2


def scored_group(job_id: str, i: int, group_size: int, tokens: int) -> bus_pb2.ScoredGroup:
    """A ScoredGroup shaped like a math rollout: G completions of `tokens` tokens and ~4 chars/token text."""
    completions = [
        bus_pb2.Completion(
            token_ids=[(7919 * (i + g) + t) % 150_000 for t in range(tokens)],
            text="x" * (4 * tokens),
            reward=float(g % 2),
            finish_reason="stop",
            reward_status="ok",
        )
        for g in range(group_size)
    ]
    return bus_pb2.ScoredGroup(
        job_id=job_id, prompt_id=f"p{i}", prompt_token_ids=list(range(200)), completions=completions,
        gen_version_start=3, gen_version_end=4, pod="pod-0",
    )  # fmt: skip


async def run_bus(url: str, job: str, messages: list, batch: int) -> float:
    """Groups/s through asympo.bus: publish(), StreamConsumer.read(), ack()."""
    keys = JobKeys(job)
    client = connect(url)
    c = StreamConsumer(
        client, keys.groups, GROUP_LEARNER, "rank0", bus_pb2.ScoredGroup, dead_stream=keys.dead
    )
    await c.ensure_group()
    t0 = time.perf_counter()
    for start in range(0, len(messages), batch):
        chunk = messages[start : start + batch]
        await publish(client, keys.groups, chunk)
        got = []
        while len(got) < len(chunk):
            got += await c.read(len(chunk) - len(got), block_ms=1000)
        await c.ack([d.entry_id for d in got])
    elapsed = time.perf_counter() - t0
    await client.aclose()
    return len(messages) / elapsed


async def run_raw(url: str, job: str, payloads: list[bytes], batch: int) -> float:
    """Groups/s with bare redis-py commands on the same bytes, no decoding."""
    stream = f"raw:{job}"
    client = redis.asyncio.Redis.from_url(url)
    await client.xgroup_create(stream, "g", id="0", mkstream=True)
    t0 = time.perf_counter()
    for start in range(0, len(payloads), batch):
        chunk = payloads[start : start + batch]
        async with client.pipeline(transaction=True) as pipe:
            for p in chunk:
                pipe.xadd(stream, {"pb": p, "v": b"1"}, maxlen=100_000, approximate=True)
            await pipe.execute()
        got = []
        while len(got) < len(chunk):
            reply = await client.xreadgroup("g", "c", {stream: ">"}, count=len(chunk) - len(got), block=1000)
            got += reply[0][1] if reply else []
        await client.xack(stream, "g", *[eid for eid, _ in got])
    elapsed = time.perf_counter() - t0
    await client.aclose()
    return len(payloads) / elapsed


def main(argv: list[str] | None = None) -> dict:
    """Run both sides `repeats` times, alternating, and write the medians and their ratio."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--groups", type=int, default=2000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bus.json")
    p.add_argument(
        "--appendfsync",
        choices=("off", "everysec", "always"),
        default="off",
        help="AOF fsync policy (off: no AOF)",
    )
    p.add_argument("--redis-dir", type=Path, default=None, help="Redis's data directory (default: temporary)")
    args = p.parse_args(argv)
    aof = {} if args.appendfsync == "off" else {"appendonly": True, "appendfsync": args.appendfsync}

    messages = [scored_group("bench", i, args.group_size, args.tokens) for i in range(args.groups)]
    payload_bytes = len(messages[0].SerializeToString())
    # The raw side moves bytes; the bus side must also serialize and parse the message. Measured apart,
    # this says how much of the gap is protobuf work any consumer of a ScoredGroup pays anyway.
    fields = {k.encode(): v for k, v in encode(messages[0]).items()}
    n = 500
    encode_us = timeit.timeit(lambda: encode(messages[0]), number=n) / n * 1e6
    decode_us = timeit.timeit(lambda: decode(fields, bus_pb2.ScoredGroup), number=n) / n * 1e6
    bus_rates, raw_rates = [], []
    with start_redis(args.redis_dir, **aof) as server:
        for r in range(args.repeats):
            raw_rates.append(
                asyncio.run(run_raw(server.url, f"b{r}", [encode(m)["pb"] for m in messages], args.batch))
            )
            bus_rates.append(asyncio.run(run_bus(server.url, f"b{r}", messages, args.batch)))
        source = server.source
    result = {
        "benchmark": "bus round trip XADD -> XREADGROUP -> XACK",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "groups": args.groups,
        "batch": args.batch,
        "group_size": args.group_size,
        "tokens_per_completion": args.tokens,
        "payload_bytes": payload_bytes,
        "repeats": args.repeats,
        "bus_groups_per_s": bus_rates,
        "raw_groups_per_s": raw_rates,
        "bus_groups_per_s_median": statistics.median(bus_rates),
        "raw_groups_per_s_median": statistics.median(raw_rates),
        "ratio_bus_to_raw": statistics.median(bus_rates) / statistics.median(raw_rates),
        "protobuf_encode_us_per_group": encode_us,
        "protobuf_decode_us_per_group": decode_us,
        "gap_us_per_group": 1e6 / statistics.median(bus_rates) - 1e6 / statistics.median(raw_rates),
        "redis_source": source,
        "appendfsync": args.appendfsync,
        "machine": machine(),
    }
    write_result(result, args.out)
    print(
        f"bus {result['bus_groups_per_s_median']:.0f} groups/s, raw {result['raw_groups_per_s_median']:.0f} groups/s, "
        f"ratio {result['ratio_bus_to_raw']:.2f} ({payload_bytes / 1024:.1f} KiB per group; of the "
        f"{result['gap_us_per_group']:.0f} us/group gap, protobuf encode+decode is {encode_us + decode_us:.0f} us)"
        f" -> {args.out}"
    )
    return result


if __name__ == "__main__":
    main()
