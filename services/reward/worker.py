"""The body of one scoring worker process: receive (id, verifier, completion, reference), send the score.

Workers are started by the pool (services/reward/pool.py) with the forkserver or spawn method and can be
killed at any moment; nothing here holds state worth keeping.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence
from multiprocessing.connection import Connection

from . import verifiers
from .scores import error


def _die_with_parent() -> None:
    # A worker spinning inside sympy never reads its pipe, so it would not notice that the service is
    # gone; ask the kernel to kill it when its parent exits instead. Linux only; elsewhere the pipe's EOF
    # (seen between items) and the pool's kill on shutdown have to do.
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _warm_up() -> None:
    # The first math-verify call compiles regexes and builds the LaTeX parser (~0.1 s); pay it before
    # reporting ready so it never eats into an item's deadline.
    try:
        verifiers.resolve("math")("\\boxed{\\frac{1}{2}}", "0.5")
    except verifiers.UnknownVerifierError:
        pass


def worker_main(conn: Connection, plugins: Sequence[str]) -> None:
    """Serve scoring requests from the pool over `conn` until it closes or sends None."""
    _die_with_parent()
    # Ctrl-C reaches the whole process group; the service, not each worker, decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        try:
            verifiers.load_plugins(plugins)
            _warm_up()
        except Exception as e:
            conn.send(("failed", f"{type(e).__name__}: {e}"))
            return
        conn.send(("ready", os.getpid()))
        while True:
            message = conn.recv()
            if message is None:
                return
            task_id, name, completion, reference = message
            try:
                result = verifiers.resolve(name)(completion, reference)
            except verifiers.UnknownVerifierError:
                result = error(
                    f"verifier {name!r} is not registered in the worker processes: register it in a plugin "
                    "module (ASYMPO_REWARD_PLUGINS) so the workers import it too"
                )
            conn.send(("done", task_id, result.reward, result.status, result.detail))
    except (EOFError, OSError):
        return  # the service closed the pipe or is gone: nobody is left to answer
