"""Admission-control counters: what was dispatched, trained and dropped, kept right under retries.

The job's `flow` hash holds `dispatched` (the dispatch position), `trained` (groups in committed
steps), `dropped:<reason>` (prompts that will never be trained: stale, zero_variance, dead, non_finite,
rolled_back, lost, unused, and for grpo no_behavior_version), `duplicates` (extra groups for a prompt, not a prompt of their own) and
`foreign` (dead-lettered tasks and groups that are no prompt of the job: for prompt_ids it never
dispatched, of another job, or not decodable at all; not prompts of its own either).
In flight = dispatched − trained − Σ dropped; the learner admits new prompts while it is ≤
(max_staleness + 1) × prompts_per_step.

Dispatch also marks each prompt in the job's claims hash (`DISPATCH_MARK` + prompt_id → its task's
max_new_tokens) until a group claims it, so the learner can tell a group for a prompt it dispatched
from an injected or replayed one, and knows how long its responses may be whatever the live knob says
now. `marks_from` in the flow hash is the position marking began at: 0 unless the job was dispatched
by a release that did not mark, and then the learner cannot tell and does not check.

Every change is a script whose second run changes nothing: redis-py re-sends a command or a whole
MULTI/EXEC when a reply is lost, and a counter bumped twice would leave in flight wrong until
admission stalls. Dispatch compares the position it started from (a re-run finds it moved); ACK-based
counts bump only for entries their XACK really removed from the pending list. `reconcile` recomputes in
flight from the streams themselves when a learner starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from google.protobuf.message import Message

from asympo.bus.codec import SCHEMA_VERSION, encode
from asympo.bus.fence import FENCE_CHECK, Fence, run_fenced
from asympo.bus.keys import GROUP_LEARNER, GROUP_ROLLOUT, JobKeys

DROPPED = "dropped:"
# Why a dispatched prompt may never be trained; every one is counted, most are also recorded by id.
DROP_REASONS = (
    "stale", "zero_variance", "dead", "non_finite", "rolled_back", "lost", "unused", "no_behavior_version",
)  # fmt: skip
FOREIGN = "foreign"
# No prompt_id holds a NUL, so a mark never collides with a claim in the same hash.
DISPATCH_MARK = "\x00d:"
MARKS_FROM = "marks_from"

_DISPATCH = (
    FENCE_CHECK
    + """
local position = tonumber(redis.call('HGET', KEYS[2], 'dispatched') or '0')
if position ~= tonumber(ARGV[2]) then return {0, position} end
local n = tonumber(ARGV[4])
for i = 5, 4 + n do
  redis.call('XADD', KEYS[3], '*', 'pb', ARGV[i], 'v', ARGV[3])
end
for i = 5 + n, #ARGV, 2 do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
end
redis.call('HSETNX', KEYS[2], 'marks_from', position)
redis.call('HSET', KEYS[2], 'dispatched', position + n)
return {1, position + n}
"""
)

_FORGET = (
    FENCE_CHECK
    + """
return redis.call('HDEL', KEYS[2], unpack(ARGV, 2))
"""
)

# Entries of a consumer group that are not done: pending (handed out, not ACKed) plus never handed out.
_OPEN_ENTRIES = """
local function open_entries(stream, group)
  if redis.call('EXISTS', stream) == 0 then return 0 end
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == group then
      return info['pending'] + #redis.call('XRANGE', stream, '(' .. info['last-delivered-id'], '+')
    end
  end
  return redis.call('XLEN', stream)
end
"""

# In flight by the counters of a flow hash: dispatched − trained − Σ dropped (with earlier releases' fields).
IN_FLIGHT = """
local function in_flight(flow_key)
  local flow = redis.call('HGETALL', flow_key)
  local n = 0
  for i = 1, #flow, 2 do
    local name, value = flow[i], tonumber(flow[i + 1])
    if name == 'dispatched' then n = n + value
    elseif name == 'trained' or name == 'consumed' or name == 'dropped' or string.sub(name, 1, 8) == 'dropped:' then
      n = n - value
    end
  end
  return n
end
"""

_RECONCILE = (
    FENCE_CHECK
    + _OPEN_ENTRIES
    + IN_FLIGHT
    + """
redis.replicate_commands()
local real = open_entries(KEYS[3], ARGV[2]) + open_entries(KEYS[4], ARGV[3])
local counted = in_flight(KEYS[2])
if counted > real then redis.call('HINCRBY', KEYS[2], 'dropped:lost', counted - real) end
return {counted, real}
"""
)


@dataclass(frozen=True)
class Flow:
    """The counters of one job."""

    dispatched: int = 0
    trained: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    foreign: int = 0

    @property
    def in_flight(self) -> int:
        """Dispatched prompts that are neither trained nor dropped yet."""
        return self.dispatched - self.trained - sum(self.dropped.values())


def admission_limit(max_staleness: int, prompts_per_step: int) -> int:
    """The most prompts that may be in flight so no group starts more than max_staleness versions behind."""
    return (max_staleness + 1) * prompts_per_step


async def read_flow(redis: aioredis.Redis, keys: JobKeys) -> Flow:
    """The job's counters (zeros before the first dispatch)."""
    raw = {_text(k): int(v) for k, v in (await redis.hgetall(keys.flow)).items()}
    dropped = dict.fromkeys(DROP_REASONS, 0) | {
        k[len(DROPPED) :]: v for k, v in raw.items() if k.startswith(DROPPED)
    }
    # Counters of jobs written by earlier releases: `consumed` (trained or dropped by the learner), `dropped`.
    trained = raw.get("trained", 0) + raw.get("consumed", 0)
    if raw.get("dropped"):
        dropped["dead"] = dropped.get("dead", 0) + raw["dropped"]
    return Flow(raw.get("dispatched", 0), trained, dropped, raw.get("duplicates", 0), raw.get(FOREIGN, 0))


class PositionMoved(RuntimeError):
    """Someone else dispatched from the position this dispatcher started at."""


async def dispatch(
    redis: aioredis.Redis,
    keys: JobKeys,
    tasks: Sequence[Message],
    *,
    position: int | None = None,
    fence: Fence | None = None,
) -> int:
    """XADD PromptTasks and move the dispatch position past them, atomically; returns the new position.

    `position` is where the tasks start (default: the current one). A re-run after a lost reply finds
    the position already moved by exactly these tasks and counts as done.
    """
    fence = fence or Fence.none(keys.lease)
    if position is None:
        position = (await read_flow(redis, keys)).dispatched
    payloads = [encode(t)["pb"] for t in tasks]
    marks = [x for t in tasks for x in (DISPATCH_MARK + t.prompt_id, t.sampling.max_new_tokens)]
    ok, now = await run_fenced(
        redis, _DISPATCH, fence, [keys.flow, keys.prompts, keys.claims],
        [position, SCHEMA_VERSION, len(payloads), *payloads, *marks],
    )  # fmt: skip
    if int(ok) or int(now) == position + len(tasks):
        return int(now)
    raise PositionMoved(f"dispatch position is {int(now)}, not {position}: another dispatcher is running")


@dataclass(frozen=True)
class Origin:
    """What the claims hash knows of a prompt_id: the entry that claimed it, its task's max_new_tokens while
    it is dispatched and unclaimed, and whether it is known at all (`checked`: the job's marks cover it)."""

    owner: str | None
    max_new_tokens: int | None
    checked: bool

    @property
    def foreign(self) -> bool:
        """Never dispatched by this job (nor claimed): an injected or replayed group."""
        return self.checked and self.owner is None and self.max_new_tokens is None


async def origins(redis: aioredis.Redis, keys: JobKeys, prompt_ids: Sequence[str]) -> list[Origin]:
    """Where each prompt_id comes from, in one round trip."""
    if not prompt_ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hget(keys.flow, MARKS_FROM)
        pipe.hmget(keys.claims, [*prompt_ids, *(DISPATCH_MARK + p for p in prompt_ids)])
        marks_from, values = await pipe.execute()
    checked = marks_from is not None and int(marks_from) == 0
    n = len(prompt_ids)
    return [
        Origin(_text(owner) if owner is not None else None, int(mark) if mark is not None else None, checked)
        for owner, mark in zip(values[:n], values[n:])
    ]


async def forget_dispatched(
    redis: aioredis.Redis, keys: JobKeys, fence: Fence, prompt_ids: Sequence[str]
) -> None:
    """Remove the dispatch marks of prompts a group has claimed (the claim speaks for them from now on)."""
    if prompt_ids:
        await run_fenced(redis, _FORGET, fence, [keys.claims], [DISPATCH_MARK + p for p in prompt_ids])


async def reconcile(redis: aioredis.Redis, keys: JobKeys, fence: Fence) -> tuple[int, int]:
    """Recompute in flight from the streams (pending + undelivered prompts and groups); returns
    (counted, found). Prompts the counters call in flight but no stream holds are counted as dropped
    with reason `lost`. Run by a learner at start, before it reads or dispatches anything."""
    counted, real = await run_fenced(
        redis, _RECONCILE, fence, [keys.flow, keys.prompts, keys.groups], [GROUP_ROLLOUT, GROUP_LEARNER]
    )
    return int(counted), int(real)


def _text(raw) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
