"""How a Redis we start is configured: memory bound, eviction policy, AOF durability.

The same choices are written into every Redis config the project ships (deploy/k8s/base/redis.conf,
docker-compose.yml); deploy/k8s/README.md explains them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Only keys with a TTL may be evicted: the system gives one only to data that may go (finished jobs'
# keys after their retention, idempotency keys). Active job state has none, so it is never evicted;
# once nothing volatile is left, Redis refuses writes exactly as `noeviction` does.
EVICTION_POLICY = "volatile-lru"
APPENDFSYNC = ("always", "everysec", "no")

# Redis's own units: k/m/g are powers of 1000, kb/mb/gb powers of 1024; case does not matter.
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}
_SIZE = re.compile(r"\s*(\d+)\s*([a-z]*)\s*", re.IGNORECASE)


def memory_bytes(value: int | str) -> int:
    """Bytes of a Redis memory value: an int, or a string such as "1gb", "512mb", "100000"."""
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value)
        unit = match.group(2).lower() if match else None
        if unit not in _UNITS:
            raise ValueError(f"not a Redis memory size: {value!r} (e.g. 1gb, 512mb, or bytes)")
        size = int(match.group(1)) * _UNITS[unit]
    if size < 0:
        raise ValueError(f"a memory size cannot be negative: {value!r}")
    return size


@dataclass(frozen=True)
class ServerConfig:
    """Durability and memory settings of a redis-server we start (None: Redis's default)."""

    appendonly: bool = False
    appendfsync: str | None = None
    maxmemory: int | str | None = None
    maxmemory_policy: str | None = None
    # command -> new name; "" disables it. Set on the local stack's Redis (stack_redis.py).
    renamed_commands: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.appendfsync is not None and self.appendfsync not in APPENDFSYNC:
            raise ValueError(f"appendfsync must be one of {', '.join(APPENDFSYNC)}, got {self.appendfsync!r}")
        if self.maxmemory is not None:
            memory_bytes(self.maxmemory)  # fail here, not in a daemon's log

    def args(self) -> list[str]:
        """redis-server command-line options for these settings."""
        args = ["--appendonly", "yes" if self.appendonly else "no"]
        if self.appendonly:
            # An RDB preamble keeps the AOF compact, and rewriting it whenever it doubles (from 64 MB on)
            # keeps a restart's replay short; a replay rebuilds the same dataset, so it fits the same
            # maxmemory.
            args += ["--aof-use-rdb-preamble", "yes", "--auto-aof-rewrite-percentage", "100",
                     "--auto-aof-rewrite-min-size", "64mb"]  # fmt: skip
        if self.appendfsync:
            args += ["--appendfsync", self.appendfsync]
        if self.maxmemory is not None:
            args += ["--maxmemory", str(memory_bytes(self.maxmemory))]
        if self.maxmemory_policy:
            args += ["--maxmemory-policy", self.maxmemory_policy]
        for command, new_name in self.renamed_commands.items():
            args += ["--rename-command", command, new_name]
        return args
