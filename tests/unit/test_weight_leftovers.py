"""Scratch and trash directories a killed writer left in a weight store, with real directories and processes."""

import os
import subprocess
import time
from dataclasses import replace

import pytest

from asympo.weights.leftovers import _start_ticks, owner_of, scratch_dir, this_process, trash_name
from asympo.weights.store import sweep_leftovers, write_version
from services.rollout.policy import FETCHED_MARK, fetched_jobs, prune_fetched

pytestmark = pytest.mark.skipif(_start_ticks(os.getpid()) is None, reason="needs /proc to tell owners apart")


def _owned(parent, name, kind, owner):
    d = parent / f".{name}.{kind}+{owner.token()}+x1y2z3"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"half a model")
    return d


def _age(path, seconds):
    then = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (then, then))


@pytest.fixture
def live_process():
    """A process of this machine that stays alive until the test ends it (a writer at work)."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait()


def test_the_sweep_removes_only_what_no_live_writer_owns(tmp_path, live_process):
    job = tmp_path / "j"
    job.mkdir()
    me = this_process()
    for v in ("v0", "v1"):  # complete versions are never touched
        (job / v).mkdir()
    other = replace(me, pid=live_process.pid, start=_start_ticks(live_process.pid))
    writing = _owned(job, "v2", "tmp", other)  # a live writer's version in progress
    mine = scratch_dir(job, "v3", "tmp")  # this process's own, in progress
    reused = _owned(job, "v4", "tmp", replace(me, start=me.start + 1))  # our pid, but an earlier process
    remote_fresh = _owned(job, "v5", "tmp", replace(me, host="learner-0"))
    remote_idle = _owned(job, "v6", "tmp", replace(me, host="learner-1"))
    _age(remote_idle, 7200)
    remote_trash = _owned(job, "v1", "trash", replace(me, host="learner-1"))
    legacy_fresh, legacy_idle, legacy_trash = (
        job / ".v7.tmp-abc",
        job / ".v8.fetch-def",
        job / ".trash-v0-1-2",
    )
    for d in (legacy_fresh, legacy_idle, legacy_trash):
        d.mkdir()
    _age(legacy_idle, 7200)

    removed = sweep_leftovers(tmp_path, "j")
    assert sorted(removed) == sorted(
        d.name for d in (reused, remote_idle, remote_trash, legacy_idle, legacy_trash)
    )
    left = {d.name for d in job.iterdir()}
    assert left == {"v0", "v1", writing.name, mine.name, remote_fresh.name, legacy_fresh.name}

    live_process.kill()  # the writer dies before renaming its version into place
    live_process.wait()
    assert sweep_leftovers(tmp_path, "j") == [writing.name]
    assert sweep_leftovers(tmp_path, "j", grace_s=0) == sorted([legacy_fresh.name, remote_fresh.name])
    assert {d.name for d in job.iterdir()} == {"v0", "v1", mine.name}  # ours stays while we live


def test_writers_name_their_scratch_directories_after_themselves(tmp_path):
    made = []

    class Recording:
        def save_pretrained(self, path, **_):
            made.append(path)
            raise OSError("killed here")

    with pytest.raises(OSError):
        write_version(tmp_path, "j", 1, 1, Recording(), None)
    (path,) = made
    assert path.name.startswith(".v1.tmp+") and owner_of(path.name) == this_process()
    assert owner_of(trash_name(tmp_path / "j" / "v1").name) == this_process()
    assert owner_of("v1") is None and owner_of(".v1.tmp-abc") is None


def test_a_pod_prunes_only_its_own_fetched_copies(tmp_path):
    fetched, shared = tmp_path / "pod" / "j", tmp_path / "store" / "j"
    for root in (fetched, shared):
        for v in ("v1", "v2"):
            (root / v).mkdir(parents=True)
    (fetched / FETCHED_MARK).touch()
    dead = _owned(fetched, "v3", "fetch", replace(this_process(), start=this_process().start + 1))

    prune_fetched(tmp_path / "pod", "j", {fetched / "v2"})
    assert {d.name for d in fetched.iterdir()} == {"v2", FETCHED_MARK}
    assert not dead.exists()
    # A --weights-dir that is the shared store by mistake: nothing there was fetched, nothing goes.
    prune_fetched(tmp_path / "store", "j", {shared / "v2"})
    assert {d.name for d in shared.iterdir()} == {"v1", "v2"}

    assert fetched_jobs(tmp_path / "pod") == ["j"] and fetched_jobs(tmp_path / "store") == []
    prune_fetched(tmp_path / "pod", "j")  # the job is over: all of it
    assert not fetched.exists() and fetched_jobs(tmp_path / "pod") == []
