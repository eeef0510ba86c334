"""`python -m services.rollout [--port 50052] [--engine auto|vllm|hf] ...`: run a rollout pod."""

from __future__ import annotations

import sys

from asympo.runtime.settings import run_service

from .settings import load_settings


async def serve(settings) -> int:
    """Serve until SIGTERM/SIGINT."""
    from .service import RolloutService  # imports torch and transformers: after logging is set up

    return await RolloutService(settings).run()


def main(argv: list[str] | None = None) -> int:
    """Parse settings, set up logging, serve until SIGTERM/SIGINT; returns the process exit code."""
    return run_service("rollout", load_settings, serve, argv)


if __name__ == "__main__":
    sys.exit(main())
