"""The local stack on real processes: `down` stops a service's whole tree and leaves a pid now another
process's alone; the stack's Redis keeps its data and port across `down`/`up` and a SIGKILL; `--purge`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import psutil
import pytest
from redis import Redis
from redis.exceptions import AuthenticationError, ResponseError
from typer.testing import CliRunner

from asympo.bus.connection import ENV_URL
from asympo.bus.local_redis import wait_gone
from asympo.cli.app import app
from asympo.cli.local_stack import PURGED, LocalStack, StackConfig, StackError
from asympo.cli.stack_redis import MAXMEMORY_ENV, admin_command

# A stand-in service: a child that ignores SIGTERM (so `down` has to SIGKILL it) and a grandchild in a
# session of its own (outside the service's process group), then the 'serving' record `up` waits for.
SERVICE = """
import json, os, signal, subprocess, sys
stubborn = "import signal as s; s.signal(s.SIGTERM, s.SIG_IGN); print('ready', flush=True); s.pause()"
child = subprocess.Popen([sys.executable, "-c", stubborn], stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "ready"
away = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"], start_new_session=True)
out = sys.argv[sys.argv.index("--pids") + 1]
with open(out + ".tmp", "w") as f:
    json.dump([child.pid, away.pid], f)
os.replace(out + ".tmp", out)
print(json.dumps({"msg": "serving", "port": 1, "metrics_port": 2}), flush=True)
signal.pause()
"""

# An unrelated process: a group leader with a child in its group, the worst case for stopping by group.
UNRELATED = """
import signal, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
print(child.pid, flush=True)
signal.pause()
"""


@pytest.fixture
def stack(tmp_path):
    """A stack home with its directories, and the list its messages go to."""
    said: list[str] = []
    s = LocalStack(StackConfig(home=tmp_path / ".asympo", start_timeout_s=120), say=said.append)
    for d in (s.config.home, s.config.logs, s.config.pids):
        d.mkdir(parents=True, exist_ok=True)
    return s, said


def running(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def kill(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()  # psutil refuses once the pid belongs to another process
        except psutil.Error:
            pass


def test_down_stops_a_service_with_its_children(stack, tmp_path):
    s, said = stack
    (tmp_path / "fake_service.py").write_text(SERVICE)
    pids_file = tmp_path / "children.json"
    s._ensure("reward", ["fake_service", "--pids", str(pids_file)], {"PYTHONPATH": str(tmp_path)})
    leader = s.running_pid("reward")
    procs = [psutil.Process(p) for p in (leader, *json.loads(pids_file.read_text()))]
    try:
        assert len(running(procs)) == 3 and s.status()["processes"]["reward"]["running"]
        start = time.monotonic()
        assert s.down(timeout_s=2.0) == ["reward"]
        # Orphans that die may stay zombies (an init that does not reap them): those count as gone,
        # not as stragglers to wait the full SIGKILL grace for.
        assert time.monotonic() - start < 10
        assert running(procs) == []
        assert said[-1:] == [f"reward: stopped (pid {leader})"]
        assert s.names() == [] and s.status()["processes"] == {}
    finally:
        kill(procs)


def test_down_leaves_a_reused_pid_alone(stack):
    s, said = stack
    other = subprocess.Popen(
        [sys.executable, "-c", UNRELATED], start_new_session=True, stdout=subprocess.PIPE
    )
    procs = [psutil.Process(other.pid)]
    try:
        procs.append(psutil.Process(int(other.stdout.readline())))
        # The pid file of a process that exited an hour after starting, its pid since given to `other`.
        started = procs[0].create_time() - 3600
        (s.config.pids / "gateway.pid").write_text(f"{other.pid}\n{started}\n")
        assert s.running_pid("gateway") is None
        assert s.status()["processes"]["gateway"]["running"] is False
        assert s.down(timeout_s=2.0) == []
        assert running(procs) == procs
        assert not (s.config.pids / "gateway.pid").exists() and said == []
    finally:
        kill(procs)
        other.wait(30)
        other.stdout.close()


# ---- the stack's Redis: durable, on its port, bounded; `down --purge` ----------------------------------


@pytest.fixture
def redis_stack(stack, monkeypatch):
    """The stack fixture with Redis started by the stack itself (no $ASYMPO_REDIS_URL); stopped after."""
    monkeypatch.delenv(ENV_URL, raising=False)
    monkeypatch.delenv(MAXMEMORY_ENV, raising=False)
    s, said = stack
    yield s, said
    s.down(timeout_s=10)


def write_job_state(url: str) -> None:
    """A job record, a stream entry and a counter: the kinds of state a run keeps in Redis."""
    with Redis.from_url(url) as r:
        r.hset("asympo:jobs", "job-1", '{"state": "running"}')
        r.xadd("asympo:job-1:groups", {"pb": b"\x08\x01", "v": "1"})
        r.hincrby("asympo:job-1:flow", "dispatched", 16)


def read_job_state(url: str) -> tuple:
    with Redis.from_url(url, decode_responses=True) as r:
        return (r.hget("asympo:jobs", "job-1"), r.xlen("asympo:job-1:groups"),
                r.hget("asympo:job-1:flow", "dispatched"))  # fmt: skip


STATE = ('{"state": "running"}', 1, "16")


def config_get(home, url: str, pattern: str) -> dict:
    """CONFIG GET through the stack's renamed admin command."""
    with Redis.from_url(url, decode_responses=True) as r:
        pairs = r.execute_command(admin_command(home), "GET", pattern)
    return pairs if isinstance(pairs, dict) else dict(zip(pairs[::2], pairs[1::2]))


def test_stack_redis_keeps_its_data_and_port_across_down_and_up(redis_stack):
    s, _ = redis_stack
    url = s._ensure_redis()
    write_job_state(url)
    home = s.config.home
    config = config_get(home, url, "maxmemory*") | config_get(home, url, "append*")
    assert (config["appendonly"], config["appendfsync"]) == ("yes", "always")
    assert (config["maxmemory"], config["maxmemory-policy"]) == (str(2**30), "volatile-lru")  # 1gb default
    (s.config.home / "weight-store" / "job-1").mkdir(parents=True)
    assert s.down(timeout_s=10) == ["redis"]
    assert (s.config.home / "redis").is_dir() and (s.config.home / "weight-store" / "job-1").is_dir()
    assert s._ensure_redis() == url, "Redis must come back on the port the services were given"
    assert read_job_state(url) == STATE


def test_stack_redis_killed_with_sigkill_comes_back_with_its_data(redis_stack):
    s, _ = redis_stack
    url = s._ensure_redis()
    write_job_state(url)
    process = psutil.Process(s.running_pid("redis"))
    process.kill()
    assert wait_gone([process], 15) == [] and s.running_pid("redis") is None
    assert s._ensure_redis() == url
    assert read_job_state(url) == STATE


def test_stack_redis_refuses_to_move_when_its_port_is_taken(redis_stack):
    s, said = redis_stack
    url = s._ensure_redis()
    s.down(timeout_s=10)
    port = urlsplit(url).port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(StackError, match=f"port {port} .*taken"):
            s._ensure_redis()
    assert s._ensure_redis() == url


def test_stack_redis_maxmemory_comes_from_the_environment(redis_stack, monkeypatch):
    s, _ = redis_stack
    monkeypatch.setenv(MAXMEMORY_ENV, "lots")
    with pytest.raises(StackError, match=MAXMEMORY_ENV):
        s._ensure_redis()
    monkeypatch.setenv(MAXMEMORY_ENV, "64mb")
    assert config_get(s.config.home, s._ensure_redis(), "maxmemory")["maxmemory"] == str(64 * 1024**2)


def test_stack_redis_needs_its_password_and_keeps_config_from_its_clients(redis_stack):
    s, said = redis_stack
    url = s._ensure_redis()
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1" and len(parts.password or "") >= 32
    for secret_file in ("redis.url", "redis.admin"):
        assert (s.config.home / secret_file).stat().st_mode & 0o077 == 0, (
            f"{secret_file} is readable by others"
        )
    assert not any(parts.password in line for line in said), "the password was printed"
    with Redis(host="127.0.0.1", port=parts.port) as anonymous:
        with pytest.raises(AuthenticationError):
            anonymous.set("k", "v")
    with Redis.from_url(url) as r:
        assert r.ping()
        for command in (("CONFIG", "SET", "dir", "/tmp"), ("MODULE", "LIST"), ("DEBUG", "SLEEP", "0")):
            with pytest.raises(ResponseError, match="unknown command"):
                r.execute_command(*command)
    assert s.down(timeout_s=10) == ["redis"]
    assert s._ensure_redis() == url, "a restarted Redis keeps the password the services were given"


def test_down_purge_removes_the_data_and_keeps_logs_reports_and_token(redis_stack):
    s, _ = redis_stack
    home = s.config.home
    write_job_state(s._ensure_redis())
    for d in ("weight-store/job-1/v1", "checkpoints/job-1", "weights/rollout/v1", "reports/job-1"):
        (home / d).mkdir(parents=True)
    (home / "logs" / "learner.log").write_text("why the last run failed\n")
    (home / "api-token").write_text("a-token-clients-were-given")
    (home / "stack.json").write_text("{}")
    with pytest.raises(StackError, match="redis still run"):
        s.purge()
    out = CliRunner().invoke(app, ["--home", str(home), "down", "--purge"])
    assert out.exit_code == 0, out.output
    # stack.json (the ports of running processes) goes with every `down`; the rest only with --purge.
    assert "removed: redis, weight-store, checkpoints, weights, redis.url\n" in out.output
    assert not [name for name in PURGED if (home / name).exists()]
    assert (home / "logs" / "learner.log").is_file() and (home / "reports" / "job-1").is_dir()
    assert (home / "api-token").is_file()
    url = s._ensure_redis()  # a clean slate: a new, empty Redis
    with Redis.from_url(url) as r:
        assert r.dbsize() == 0
