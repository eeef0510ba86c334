"""What must hold of a finished job however it was interrupted, read from the job's own records in Redis.

- the step records (the job's history after roll-backs) are steps 1..N, once each, in order;
- no prompt_id appears in two step records;
- every dispatched prompt is either in a step record or in a drop record or the dead-letter stream
  (with its reason), the rest counted as `unused` (in flight when the job ended); dead letters of groups
  for prompts the job never dispatched are counted `foreign`, apart from the job's prompts;
- the counters agree: trained = prompts in step records, dispatched = trained + every drop, and no
  prompt the job never dispatched is trained or dropped;
- published versions are 0, 1, 2, ... with no gap and no repeat.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter

from asympo.bus import JobKeys, decode, read_flow
from asympo.bus.codec import EntryError
from asympo.bus.ledger import drop_records
from asympo.jobs.spec import JobSpec
from asympo.proto.v1 import bus_pb2
from asympo.tasks import build_task


async def check_history(redis, keys: JobKeys, spec: JobSpec) -> dict:
    """Assert every invariant above; returns what was counted (for the test's own report)."""
    records = [json.loads(f[b"json"]) for _, f in await redis.xrange(keys.steps)]
    steps = [r for r in records if r.get("prompt_ids") is not None]
    assert [r["step"] for r in steps] == list(range(1, spec.algorithm.steps + 1)), [r["step"] for r in steps]
    trained = [p for r in steps for p in r["prompt_ids"]]
    twice = [p for p, n in Counter(trained).items() if n > 1]
    assert not twice, f"prompts trained twice: {twice[:10]}"

    flow = await read_flow(redis, keys)
    assert flow.trained == len(trained), (flow, len(trained))
    assert flow.dispatched == flow.trained + sum(flow.dropped.values()), flow

    dropped: dict[str, str] = {}
    for record in await drop_records(redis, keys):
        for pid in record["prompt_ids"]:
            dropped[pid] = record["reason"]
    kinds = {keys.prompts: bus_pb2.PromptTask, keys.groups: bus_pb2.ScoredGroup}
    foreign = 0
    for _, fields in await redis.xrange(keys.dead):
        kind = kinds.get(fields[b"stream"].decode())
        if fields.get(b"counted") == b"foreign":
            foreign += 1
        elif kind is not None:
            try:
                dropped[decode(fields, kind).prompt_id] = "dead: " + fields[b"reason"].decode()
            except EntryError:
                pass
    assert not set(dropped) & set(trained), set(dropped) & set(trained)
    by_reason = Counter(r.split(":")[0] for r in dropped.values())
    for reason in ("stale", "zero_variance", "non_finite", "rolled_back", "no_behavior_version"):
        assert by_reason[reason] == flow.dropped[reason], (reason, by_reason, flow.dropped)
    assert by_reason["dead"] == flow.dropped["dead"], (by_reason, flow.dropped)
    assert foreign == flow.foreign, (foreign, flow)

    stream = build_task(spec.task).train_stream(seed=spec.seed)
    dispatched = [p.prompt_id for p in itertools.islice(stream, flow.dispatched)]
    strangers = (set(dropped) | set(trained)) - set(dispatched)
    assert not strangers, f"prompts trained or dropped but never dispatched: {sorted(strangers)[:10]}"
    unaccounted = [p for p in dispatched if p not in set(trained) and p not in dropped]
    assert len(unaccounted) == flow.dropped["unused"] + flow.dropped["lost"], (len(unaccounted), flow.dropped)

    versions = [decode(f, bus_pb2.PolicyVersion).version for _, f in await redis.xrange(keys.policy)]
    assert versions == list(range(len(versions))), versions
    return {
        "steps": len(steps), "trained": len(trained), "dispatched": flow.dispatched, "dropped": flow.dropped,
        "foreign": foreign,
        "versions": len(versions), "rollbacks": [r for r in records if r.get("rollback")],
    }  # fmt: skip
