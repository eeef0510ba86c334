"""Leaving a process that ran torch.distributed without the interpreter's finalization."""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn


def leave(code: int) -> NoReturn:
    """Flush logs and stdio, then exit with `code` at once, skipping the interpreter's finalization.

    A gloo process group outlives `destroy_process_group` while a model still refers to it, and its
    worker threads free finished collectives (holding Python tensors) after the collective returned.
    One that reaches for the GIL while the interpreter is finalizing aborts the whole process
    (SIGABRT, "terminate called without an active exception"): a clean run would exit as a crash.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
