"""`asympo down` on real processes: a service's whole tree goes; a pid now another process's stays."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil
import pytest

from asympo.cli.local_stack import LocalStack, StackConfig

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
