"""`python -m services.rollout [--port 50052] [--engine auto|vllm|hf] ...`: run a rollout pod."""

from __future__ import annotations

import asyncio
import signal
import sys

from asympo.service_settings import SettingsError
from asympo.telemetry import setup_logging

from .settings import load_settings


def _exit_quietly(signum, frame):
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Parse settings, set up logging, serve until SIGTERM/SIGINT; returns the process exit code."""
    try:
        settings = load_settings(argv)
    except SettingsError as e:
        print(e, file=sys.stderr)
        return 2
    log = setup_logging("rollout", settings.log_level)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_quietly)  # until the event loop takes the signals over
    from .service import RolloutService  # imports torch and transformers: after logging is set up

    try:
        return asyncio.run(RolloutService(settings).run())
    except OSError as e:
        log.error(f"cannot start the rollout pod: {e}")
        return 1
    except Exception:
        log.exception("the rollout pod failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
