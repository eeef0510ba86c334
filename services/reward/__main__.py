"""`python -m services.reward [--port 50051] [--metrics-port 9101] [--workers N] ...`: run the reward service."""

from __future__ import annotations

import sys

from asympo.runtime.settings import ServiceStartError, run_service

from .settings import load_settings


async def serve(settings) -> int:
    """Serve until SIGTERM/SIGINT; a plugin that cannot load is a start-up error."""
    # Imported after logging is set up: importing the verifiers loads sympy and any plugin's side effects.
    from .server import RewardService
    from .verifiers import PluginError

    try:
        return await RewardService(settings).run()
    except PluginError as e:
        raise ServiceStartError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    """Parse settings, set up logging, serve until SIGTERM/SIGINT; returns the process exit code."""
    return run_service("reward", load_settings, serve, argv)


if __name__ == "__main__":
    sys.exit(main())
