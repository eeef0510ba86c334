"""Admission-control counters: what was dispatched, trained and dropped, kept right under retries.

The job's `flow` hash holds `dispatched` (the dispatch position), `trained` (groups in committed
steps), `dropped:<reason>` (prompts that will never be trained: stale, zero_variance, dead, rolled_back,
lost, unused) and `duplicates` (extra groups for a prompt, not a prompt of their own). In flight =
dispatched − trained − Σ dropped; the learner admits new prompts while it is ≤ (max_staleness + 1) ×
prompts_per_step.

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
DROP_REASONS = ("stale", "zero_variance", "dead", "rolled_back", "lost", "unused")

_DISPATCH = (
    FENCE_CHECK
    + """
local position = tonumber(redis.call('HGET', KEYS[2], 'dispatched') or '0')
if position ~= tonumber(ARGV[2]) then return {0, position} end
for i = 4, #ARGV do
  redis.call('XADD', KEYS[3], '*', 'pb', ARGV[i], 'v', ARGV[3])
end
redis.call('HSET', KEYS[2], 'dispatched', position + #ARGV - 3)
return {1, position + #ARGV - 3}
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
    return Flow(raw.get("dispatched", 0), trained, dropped, raw.get("duplicates", 0))


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
    ok, now = await run_fenced(
        redis, _DISPATCH, fence, [keys.flow, keys.prompts], [position, SCHEMA_VERSION, *payloads]
    )
    if int(ok) or int(now) == position + len(tasks):
        return int(now)
    raise PositionMoved(f"dispatch position is {int(now)}, not {position}: another dispatcher is running")


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
