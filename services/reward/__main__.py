"""`python -m services.reward [--port 50051] [--metrics-port 9101] [--workers N] ...`: run the reward service."""

from __future__ import annotations

import asyncio
import signal
import sys

from asympo.telemetry import setup_logging

from .settings import SettingsError, load_settings


def _exit_quietly(signum, frame):
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Parse settings, set up logging, serve until SIGTERM/SIGINT; returns the process exit code."""
    try:
        settings = load_settings(argv)
    except SettingsError as e:
        print(e, file=sys.stderr)
        return 2
    log = setup_logging("reward", settings.log_level)
    # Until the event loop takes the signals over, a SIGTERM/SIGINT (e.g. while sympy imports) means
    # "never mind": exit 0 as after any other stop, not by the default disposition.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_quietly)
    # Imported after logging is set up: importing the verifiers loads sympy and any plugin's side effects.
    from .server import RewardService
    from .verifiers import PluginError

    try:
        return asyncio.run(RewardService(settings).run())
    except PluginError as e:
        log.error(str(e))
        return 2
    except OSError as e:
        log.error(f"cannot start the reward service: {e}")
        return 1
    except Exception:
        log.exception("the reward service failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
