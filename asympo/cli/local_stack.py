"""The local stack: Redis and the four services as detached child processes on loopback.

State lives under one home directory (default `.asympo/`): `logs/<service>.log`, `pids/<service>.pid`,
`redis.url`, `redis/` (Redis's data: see stack_redis.py), `api-token`, `grpc-token` (the services' shared
gRPC token, mode 600), `stack.json` (ports), the weight store, checkpoints and reports. `up` is
idempotent: it starts only what is not running, so a crashed service (Redis included, with its data)
comes back with another `up`. `down` stops exactly the processes whose pid files `up` wrote (each in
its own process group, so a service's children, such as the vLLM engine core or the reward workers, go
with it); a pid that now belongs to another process is left alone. `down` keeps the data; `purge()` (`asympo down --purge`) then removes it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from asympo.bus.connection import ENV_URL
from asympo.bus.local_redis import RedisUnavailable
from asympo.cli.processes import owned_process, pid_record, stop_tree
from asympo.cli.stack_redis import start_stack_redis
from asympo.runtime.api_token import TOKEN_ENV
from asympo.runtime.grpc_auth import GRPC_TOKEN_ENV, saved_token
from asympo.runtime.private_files import saved_secret, write_private

SERVICES = ("reward", "rollout", "learner", "gateway")
# What `down --purge` removes, under the home: Redis's data, the weight store, checkpoints, the pods'
# fetched weights, the ports and the Redis URL. Kept: logs/ (why the last run failed is often the
# reason to start over), reports/ (what runs produced), api-token (clients were given it) and grpc-token.
PURGED = ("redis", "weight-store", "checkpoints", "weights", "stack.json", "redis.url")


class StackError(RuntimeError):
    """A service of the local stack could not be started or is unhealthy; the message says which and why."""


@dataclass
class StackConfig:
    """How `asympo up` lays the stack out."""

    home: Path = Path(".asympo")
    gateway_port: int = 8000
    rollout_pods: int = 1
    engine: str = "auto"
    start_timeout_s: float = 300.0
    # Extra flags per service, e.g. {"rollout": ["--claim-idle-s", "5"]} (tests, tuning).
    extra_flags: dict[str, list[str]] = field(default_factory=dict)
    # CPUs per service (`rollout` covers every pod), e.g. {"rollout": {0}, "learner": {1}}: separate
    # cores as separate GPU pools would be. A service not named runs wherever the OS puts it.
    cpus: dict[str, set[int]] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        """Service logs."""
        return self.home / "logs"

    @property
    def pids(self) -> Path:
        """Pid files of what `up` started."""
        return self.home / "pids"


class LocalStack:
    """Start, inspect and stop the stack under `config.home`."""

    def __init__(self, config: StackConfig, say: Callable[[str], None] = print):
        # Absolute, so the services (and Redis, which changes directory) agree on every path under it.
        config.home = Path(config.home).resolve()
        self.config = config
        self.say = say

    # ---- state files -----------------------------------------------------------------------------

    def _pidfile(self, name: str) -> Path:
        return self.config.pids / f"{name}.pid"

    def _recorded(self, name: str) -> tuple[int, float | None] | None:
        """The pid in a pid file and the start time recorded with it (None in files of older versions)."""
        try:
            fields = self._pidfile(name).read_text().split()
            return int(fields[0]), float(fields[1]) if len(fields) > 1 else None
        except (OSError, ValueError, IndexError):
            return None

    def running_pid(self, name: str) -> int | None:
        """The pid of a stack process that is alive, else None."""
        recorded = self._recorded(name)
        process = owned_process(*recorded) if recorded else None
        return process.pid if process else None

    def _ports(self) -> dict:
        try:
            return json.loads((self.config.home / "stack.json").read_text())
        except (OSError, ValueError):
            return {}

    def _save_port(self, name: str, record: dict) -> None:
        ports = self._ports()
        ports[name] = record
        (self.config.home / "stack.json").write_text(json.dumps(ports, indent=1))

    def token(self) -> str:
        """The gateway token: $ASYMPO_API_TOKEN, else the one saved under home, else a new one (saved)."""
        env = os.environ.get(TOKEN_ENV)
        if env:
            return env
        path = self.config.home / "api-token"
        token, created = saved_secret(path, lambda: secrets.token_urlsafe(24))
        if created:
            self.say(f"generated an API token (saved in {path}): {token}")
        return token

    def grpc_token(self) -> str:
        """The services' shared gRPC token: $ASYMPO_GRPC_TOKEN, else `grpc-token` under home (made once)."""
        if os.environ.get(GRPC_TOKEN_ENV):
            return os.environ[GRPC_TOKEN_ENV]
        token, created = saved_token(self.config.home / "grpc-token")
        if created:
            self.say(f"generated the services' gRPC token (saved in {self.config.home / 'grpc-token'})")
        return token

    def redis_url(self) -> str | None:
        """The Redis the stack uses, if known."""
        if os.environ.get(ENV_URL):
            return os.environ[ENV_URL]
        path = self.config.home / "redis.url"
        return path.read_text().strip() if path.is_file() else None

    def gateway_url(self) -> str:
        """Where the gateway listens."""
        port = self._ports().get("gateway", {}).get("port", self.config.gateway_port)
        return f"http://127.0.0.1:{port}"

    # ---- up --------------------------------------------------------------------------------------

    def up(self) -> dict:
        """Start whatever is not running, wait until every service is healthy; returns status()."""
        c = self.config
        for d in (c.home, c.logs, c.pids):
            d.mkdir(parents=True, exist_ok=True)
        url = self._ensure_redis()
        token = self.token()
        env = {ENV_URL: url, TOKEN_ENV: token}
        env[GRPC_TOKEN_ENV] = self.grpc_token()
        reward_port = self._ensure("reward", ["services.reward"], env)["port"]
        for i in range(c.rollout_pods):
            name = "rollout" if i == 0 else f"rollout-{i}"
            flags = ["--pod", f"local-{name}", "--reward-target", f"127.0.0.1:{reward_port}",
                     "--engine", c.engine, "--weights-dir", str(c.home / "weights" / name)]  # fmt: skip
            self._ensure(name, ["services.rollout", *flags], env, extra=c.extra_flags.get("rollout", []))
        # Unpinned, training and generation share the machine: half its CPUs each, or their threads
        # preempt each other (on 2 cores, 1 thread trains a step ~10% faster than 2 beside a busy pod).
        threads = (
            [] if "learner" in c.cpus else ["--torch-threads", str(max(1, len(os.sched_getaffinity(0)) // 2))]
        )
        self._ensure("learner", ["services.learner", "--weight-store", str(c.home / "weight-store"),
                                 "--checkpoint-dir", str(c.home / "checkpoints"), *threads], env)  # fmt: skip
        self._ensure("gateway", ["services.gateway"], env, port=c.gateway_port)
        self._wait_http(self.gateway_url() + "/healthz", "gateway")
        return self.status()

    def _ensure_redis(self) -> str:
        if os.environ.get(ENV_URL):
            return os.environ[ENV_URL]
        url = self.redis_url()
        if url and self.running_pid("redis"):
            return url
        try:
            server = start_stack_redis(self.config.home, url)
        except RedisUnavailable as exc:
            raise StackError(f"redis: {exc}") from None
        self._pidfile("redis").write_text(pid_record(server.pid))
        write_private(self.config.home / "redis.url", server.url)  # it carries the password
        where = f"127.0.0.1:{server.port}" if server.port else "its URL"
        self.say(
            f"redis: started ({server.source}) at {where}, password in redis.url, data in {server.data_dir}"
        )
        return server.url

    def _ensure(self, name: str, argv: list[str], env: dict, port: int = 0, extra: list[str] = ()) -> dict:
        """Start one service unless it runs; wait for its 'serving' log record; returns its ports."""
        pid = self.running_pid(name)
        record = self._ports().get(name)
        if pid and record:
            return record
        metrics_port = 0
        if record and not port:
            # A restart takes the ports it had: the services started after it were told them.
            port, metrics_port = record.get("port") or 0, record.get("metrics_port") or 0
        log_path = self.config.logs / f"{name}.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        module, *flags = argv
        flags = [*flags, *self.config.extra_flags.get(name, []), *extra]
        ports = ["--host", "127.0.0.1", "--port", str(port)]
        if module != "services.gateway":
            ports += ["--metrics-port", str(metrics_port)]
        cpus = self.config.cpus.get(name.split("-")[0])
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, *ports, *flags], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env={**os.environ, **env}, start_new_session=True,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )  # fmt: skip
        self._pidfile(name).write_text(pid_record(proc.pid))
        record = self._wait_serving(name, proc, log_path, offset)
        record["pid"] = proc.pid
        self._save_port(name, record)
        self.say(f"{name}: started (pid {proc.pid}, port {record['port']})")
        return record

    def _wait_serving(self, name: str, proc: subprocess.Popen, log_path: Path, offset: int) -> dict:
        deadline = time.monotonic() + self.config.start_timeout_s
        while time.monotonic() < deadline:
            with open(log_path, "rb") as f:
                f.seek(offset)
                for line in f.read().decode(errors="replace").splitlines():
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict) and record.get("msg") == "serving":
                        return {"port": record.get("port"), "metrics_port": record.get("metrics_port")}
            if proc.poll() is not None:
                tail = log_path.read_bytes()[offset:].decode(errors="replace")[-2000:]
                raise StackError(f"{name} exited with code {proc.returncode} while starting:\n{tail}")
            time.sleep(0.2)
        raise StackError(
            f"{name} did not report 'serving' within {self.config.start_timeout_s:.0f} s; see {log_path}"
        )

    def _wait_http(self, url: str, name: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        error = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError as exc:
                error = str(exc)
            time.sleep(0.2)
        raise StackError(f"{name} is not healthy at {url}: {error}")

    # ---- status and down -------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every process name `up` has a pid file for (redis, services, extra rollout pods)."""
        if not self.config.pids.is_dir():
            return []
        return sorted(p.stem for p in self.config.pids.glob("*.pid"))

    def status(self) -> dict:
        """Each process: pid, running, ports; plus the Redis URL, gateway URL and log directory."""
        ports = self._ports()
        procs = {}
        for name in self.names():
            pid = self.running_pid(name)
            procs[name] = {"pid": pid, "running": pid is not None, **{k: v for k, v in ports.get(name, {}).items()
                                                                      if k != "pid"}}  # fmt: skip
        return {"redis_url": self.redis_url(), "gateway_url": self.gateway_url(), "logs": str(self.config.logs),
                "processes": procs}  # fmt: skip

    def down(self, timeout_s: float = 60.0) -> list[str]:
        """SIGTERM every process `up` started (gateway first, Redis last), SIGKILL stragglers; returns names."""
        order = {"gateway": 0, "learner": 2, "reward": 3, "redis": 4}
        names = sorted(self.names(), key=lambda n: order.get(n, 1))
        stopped = []
        for name in names:
            recorded = self._recorded(name)
            if recorded and stop_tree(*recorded, timeout_s if name != "redis" else 10.0):
                stopped.append(name)
                self.say(f"{name}: stopped (pid {recorded[0]})")
            self._pidfile(name).unlink(missing_ok=True)
        (self.config.home / "stack.json").unlink(missing_ok=True)
        return stopped

    def purge(self) -> list[Path]:
        """Remove the stack's data (PURGED) for a clean slate; call after down(). Returns what was removed."""
        running = [n for n in self.names() if self.running_pid(n)]
        if running:
            raise StackError(f"not purging while {', '.join(running)} still run: `asympo down` first")
        removed = []
        for name in PURGED:
            path = self.config.home / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()  # a link goes, what it points to stays
            else:
                continue
            removed.append(path)
            self.say(f"removed {path}")
        return removed
