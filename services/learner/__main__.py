"""`python -m services.learner [--job-id ID] [--exit-when-idle] ...`, or under `torchrun --nproc-per-node N`."""

from __future__ import annotations

import os

from asympo.runtime.process_exit import leave
from asympo.runtime.settings import run_service

from .settings import load_settings


async def serve(settings) -> int:
    """Train jobs until SIGTERM/SIGINT (or idle)."""
    from .service import LearnerService  # imports torch and transformers: after logging is set up

    return await LearnerService(settings).run()


def main(argv: list[str] | None = None) -> int:
    """Parse settings, set up logging, train; returns the process exit code."""
    rank = os.environ.get("RANK", "0")
    return run_service("learner" if rank == "0" else f"learner-rank{rank}", load_settings, serve, argv)


if __name__ == "__main__":
    # Not sys.exit: under torchrun, gloo's threads can abort a finished learner during finalization.
    leave(main())
