"""One learner per job: a lease with a fencing token, checked by every write the learner makes.

The lease is a hash `asympo:{job}:lease` {token, holder, expires_ms, clean, crashes, previous, op}
without a Redis TTL (an evicting Redis must never drop it; expiry is a field compared with Redis's own
clock). A learner acquires it before touching a job and renews it a few times per `ttl_s`; acquiring
takes the next token, so a later holder always has a larger one. Every script a learner runs against
the job begins with `FENCE_CHECK`: it refuses to run unless the lease's token is still the caller's, so a
learner that lost the job (partitioned, paused past its lease, or simply a second learner started by
mistake) can no longer dispatch, publish, ACK or change the job record.

A holder that releases the lease marks it `clean`; acquiring a lease whose previous holder never
released it counts a crash (`crashes`), which is what the learner's restart budget is checked against.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

# KEYS[1] = the lease hash, ARGV[1] = the caller's token ('' = an unfenced caller: tools and tests).
FENCE_CHECK = """
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return redis.error_reply('FENCED the job lease belongs to a newer learner; token ' .. ARGV[1] .. ' is stale')
end
"""

# ARGV: holder, ttl_ms, take_from, the call's op id. A re-sent call (its reply was lost) finds its op id
# and returns the grant it made, instead of taking another token and counting itself as a crash.
_ACQUIRE = """
redis.replicate_commands()
if redis.call('HGET', KEYS[1], 'op') == ARGV[4] then
  local g = redis.call('HMGET', KEYS[1], 'token', 'crashes', 'previous')
  return {tonumber(g[1]), tonumber(g[2]), g[3]}
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local holder = redis.call('HGET', KEYS[1], 'holder')
local expires = tonumber(redis.call('HGET', KEYS[1], 'expires_ms') or '0')
local clean = redis.call('HGET', KEYS[1], 'clean')
if holder and clean ~= '1' and expires > now and holder ~= ARGV[1] and holder ~= ARGV[3] then
  return {0, holder, expires - now}
end
local crashes = tonumber(redis.call('HGET', KEYS[1], 'crashes') or '0')
if holder and clean ~= '1' then
  crashes = crashes + 1
end
local token = redis.call('HINCRBY', KEYS[1], 'token', 1)
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'expires_ms', now + tonumber(ARGV[2]), 'clean', '0',
           'crashes', crashes, 'previous', holder or '', 'op', ARGV[4])
return {token, crashes, holder or ''}
"""

_RENEW = (
    FENCE_CHECK
    + """
redis.replicate_commands()
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'expires_ms', t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[2]))
return 1
"""
)

_RELEASE = (
    FENCE_CHECK
    + """
redis.call('HSET', KEYS[1], 'expires_ms', 0, 'clean', ARGV[2])
return 1
"""
)


_CHECK = FENCE_CHECK + "return 1\n"


class Fenced(RuntimeError):
    """A write refused because a newer learner holds the job's lease."""


def holder_name() -> str:
    """Who this process is, as a lease holder: host and pid (pid 1 again after a container restart)."""
    return f"{socket.gethostname()}/{os.getpid()}"


def holder_is_dead(holder: str) -> bool:
    """Whether a lease holder is provably gone: a process of this host that no longer exists."""
    host, _, pid = holder.rpartition("/")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True  # a restarted container runs as the same pid: the holder was this pod's previous life
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True)
class Grant:
    """The lease is ours: its fencing token, and how many earlier holders died holding it."""

    token: int
    crashes: int
    previous: str


@dataclass(frozen=True)
class Held:
    """Someone else holds the lease, for `expires_in_s` more unless renewed."""

    holder: str
    expires_in_s: float


@dataclass(frozen=True)
class Fence:
    """The lease key and token a fenced script checks; `Fence.none(key)` fences nothing (tools, tests)."""

    lease_key: str
    token: str

    @classmethod
    def none(cls, lease_key: str) -> Fence:
        """An unfenced caller of fenced scripts."""
        return cls(lease_key, "")

    def keys(self, *keys: str) -> list[str]:
        """KEYS for a fenced script: the lease first."""
        return [self.lease_key, *keys]

    def args(self, *args) -> list:
        """ARGV for a fenced script: the token first."""
        return [self.token, *args]


async def run_fenced(redis: aioredis.Redis, script: str, fence: Fence, keys: Sequence[str], args: Sequence):
    """EVAL a script that begins with FENCE_CHECK; `Fenced` if the lease is no longer ours."""
    try:
        return await redis.eval(script, 1 + len(keys), *fence.keys(*keys), *fence.args(*args))
    except ResponseError as exc:
        if str(exc).startswith("FENCED"):
            raise Fenced(str(exc)) from None
        raise


async def check_fence(redis: aioredis.Redis, fence: Fence) -> None:
    """`Fenced` unless the caller still holds the lease (before effects outside Redis, e.g. files)."""
    await run_fenced(redis, _CHECK, fence, [], [])


class JobLease:
    """Acquire, renew and release one job's lease."""

    def __init__(self, redis: aioredis.Redis, lease_key: str, ttl_s: float, holder: str | None = None):
        self.redis = redis
        self.key = lease_key
        self.ttl_ms = int(ttl_s * 1000)
        self.holder = holder or holder_name()
        self.fence: Fence | None = None

    async def acquire(self, take_from: str = "") -> Grant | Held:
        """Take the lease unless a live holder has it (`take_from`: a holder known to be dead)."""
        reply = await self.redis.eval(
            _ACQUIRE, 1, self.key, self.holder, self.ttl_ms, take_from, uuid.uuid4().hex
        )
        if int(reply[0]) == 0:
            return Held(_text(reply[1]), int(reply[2]) / 1000)
        self.fence = Fence(self.key, str(int(reply[0])))
        return Grant(int(reply[0]), int(reply[1]), _text(reply[2]))

    async def renew(self) -> None:
        """Extend the lease; `Fenced` if a newer learner took it."""
        await run_fenced(self.redis, _RENEW, self.fence, [], [self.ttl_ms])

    async def release(self, clean: bool = True) -> None:
        """Give the lease up (clean: this learner stopped on purpose, not by crashing)."""
        await run_fenced(self.redis, _RELEASE, self.fence, [], ["1" if clean else "0"])


async def lease_state(redis: aioredis.Redis, lease_key: str) -> dict[str, str]:
    """The lease hash as strings (empty if no learner ever held the job)."""
    return {_text(k): _text(v) for k, v in (await redis.hgetall(lease_key)).items()}


def _text(raw) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
