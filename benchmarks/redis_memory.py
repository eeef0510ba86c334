"""Redis memory across demo jobs run back to back through the local stack.

Starts the stack (`asympo up`) in a scratch home, submits the demo job (examples/jobs/arith-tiny.yaml)
N times, one after the other, and records after each job Redis's `used_memory`, the number of keys and
the memory of each job's keys (MEMORY USAGE). After the last job it waits `--settle-s` (so finished
jobs' keys can expire) and measures once more.

    python benchmarks/redis_memory.py --jobs 3 [--retention-s 30 --settle-s 45] [--steps 200]

`--retention-s` is the learner's retention of finished jobs' keys (ASYMPO_LEARNER_RETENTION_S; by
default a week). Results: benchmarks/results/redis_memory.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import machine, write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "examples" / "jobs" / "arith-tiny.yaml"


EXTRA_ENV: dict[str, str] = {}


def asympo(home: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "ASYMPO_HOME": str(home), **EXTRA_ENV}
    env.pop("ASYMPO_REDIS_URL", None)
    env.pop("ASYMPO_API_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "asympo.cli", *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=timeout, check=True,
    )  # fmt: skip


def snapshot(client: redis.Redis) -> dict:
    """used_memory, key count and bytes per job (keys asympo:{job}:*) and for the shared keys."""
    info = client.info("memory")
    per_job: dict[str, int] = {}
    shared = 0
    for key in client.scan_iter(match="asympo:*", count=1000):
        name = key.decode()
        size = client.memory_usage(key, samples=0) or 0
        parts = name.split(":")
        if len(parts) >= 3:
            per_job[parts[1]] = per_job.get(parts[1], 0) + size
        else:
            shared += size
    return {
        "used_memory": info["used_memory"],
        "used_memory_dataset": info.get("used_memory_dataset"),
        "maxmemory": info.get("maxmemory"),
        "maxmemory_policy": info.get("maxmemory_policy"),
        "keys": client.dbsize(),
        "job_key_bytes": per_job,
        "shared_key_bytes": shared,
        "time": time.time(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="override algorithm.steps of the demo job")
    parser.add_argument("--settle-s", type=float, default=0.0, help="wait this long after the last job")
    parser.add_argument(
        "--retention-s", type=float, default=None, help="the learner's retention of ended jobs"
    )
    parser.add_argument("--label", default="", help="a name for this run in the JSON (e.g. the commit)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "redis_memory.json")
    args = parser.parse_args()
    if args.retention_s is not None:
        EXTRA_ENV["ASYMPO_LEARNER_RETENTION_S"] = str(args.retention_s)
    result = {"benchmark": "redis_memory", "label": args.label, "retention_s": args.retention_s, "jobs": [],
              "machine": machine()}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="asympo-redis-mem-") as scratch:
        home = Path(scratch) / ".asympo"
        asympo(home, "up", "--gateway-port", str(_free_port()))
        try:
            url = (home / "redis.url").read_text().strip()
            client = redis.Redis.from_url(url)
            result["before"] = snapshot(client)
            for i in range(args.jobs):
                extra = ["--set", f"algorithm.steps={args.steps}"] if args.steps else []
                t0 = time.monotonic()
                out = asympo(home, "submit", str(JOB), *extra, "--watch")
                snap = snapshot(client)
                snap["seconds"] = time.monotonic() - t0
                snap["submit_output_tail"] = out.stdout[-300:]
                result["jobs"].append(snap)
                print(f"job {i + 1}: used_memory {snap['used_memory'] / 2**20:.1f} MiB, {snap['keys']} keys",
                      flush=True)  # fmt: skip
            if args.settle_s:
                time.sleep(args.settle_s)
                result["settled"] = snapshot(client)
                print(
                    f"after {args.settle_s:.0f} s: used_memory {result['settled']['used_memory'] / 2**20:.1f} MiB"
                )
        finally:
            asympo(home, "down", timeout=300)
    write_result(result, args.out)
    print(f"wrote {args.out}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
