"""`python -m services.learner [--job-id ID] [--exit-when-idle] ...`, or under `torchrun --nproc-per-node N`."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from asympo.service_settings import SettingsError
from asympo.telemetry import setup_logging

from .settings import load_settings


def _exit_quietly(signum, frame):
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Parse settings, set up logging, train jobs until SIGTERM/SIGINT (or idle); returns the exit code."""
    try:
        settings = load_settings(argv)
    except SettingsError as e:
        print(e, file=sys.stderr)
        return 2
    rank = os.environ.get("RANK", "0")
    log = setup_logging("learner" if rank == "0" else f"learner-rank{rank}", settings.log_level)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_quietly)  # until the event loop takes the signals over
    from .service import LearnerService  # imports torch and transformers: after logging is set up

    try:
        return asyncio.run(LearnerService(settings).run())
    except OSError as e:
        log.error(f"cannot start the learner: {e}")
        return 1
    except Exception:
        log.exception("the learner failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
