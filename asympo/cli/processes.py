"""The local stack's processes: pid files that survive pid reuse, process groups, stopping a service's tree.

psutil comes with the `local` extra; the core's `asympo` command imports this module without it, so
each function imports it where it is needed.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from asympo.bus.local_redis import pid_alive, wait_gone

if TYPE_CHECKING:
    import psutil

# psutil's create_time() adds the boot time, which the kernel gives in whole seconds that can move by
# one between reads; a pid reused within a second or two of the first process starting is unheard of.
_START_SLACK_S = 2.0


def pid_record(pid: int) -> str:
    """A pid file's text: the pid, then the process's start time, which a later owner of the pid lacks."""
    import psutil  # the `local` extra: the core's `asympo` command imports this module without it

    try:
        started = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        started = 0.0  # gone already: whatever holds this pid later is not ours
    return f"{pid}\n{started}\n"


def owned_process(pid: int, started: float | None) -> psutil.Process | None:
    """The live (non-zombie) process `up` recorded as `pid` started at `started`, else None."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        if started is not None and abs(process.create_time() - started) > _START_SLACK_S:
            return None  # the pid was reused
        return process
    except psutil.Error:
        return None


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of a process group."""
    import psutil

    out = []
    for process in psutil.process_iter(["status"]):
        try:
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.pid) == pgid:
                out.append(process)
        except OSError:  # gone since it was listed
            continue
    return out


def stop_tree(pid: int, started: float | None, timeout_s: float) -> bool:
    """SIGTERM what `up` started at `pid` (its group and descendants), SIGKILL what is left; False if none."""
    import psutil

    leader = owned_process(pid, started)
    if leader is None and pid_alive(pid):
        # The pid was reused, and the kernel frees a pid only once no group of that id is left: any
        # group of that id is the new owner's.
        return False
    found = False
    for send, wait_s in ((psutil.Process.terminate, timeout_s), (psutil.Process.kill, 10.0)):
        # Collected again before SIGKILL, as a dying process may have started children. The group
        # holds them even after the leader is gone; the tree also holds those that left the group.
        procs = set(group_members(pid))
        if leader is not None:
            try:
                procs |= {leader, *leader.children(recursive=True)}
            except psutil.Error:
                pass
        if not procs:
            break
        found = True
        for process in procs:
            try:
                send(process)
            except psutil.Error:
                pass
        if not wait_gone(procs, wait_s):
            break
    return found
