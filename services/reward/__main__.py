"""`python -m services.reward [--port 50051] [--metrics-port 9101] [--workers N] ...`: run the reward service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys

from asympo.runtime.settings import ServiceStartError, run_service

from .settings import load_settings

log = logging.getLogger(__name__)


async def publish_catalog() -> None:
    """Write the registered verifiers to Redis ($ASYMPO_REDIS_URL), where the gateway checks job specs."""
    from asympo.bus.connection import ENV_URL, connect
    from asympo.jobs import verifier_catalog

    from .verifiers import catalog

    if not os.environ.get(ENV_URL):
        log.info(
            "verifier catalog not published",
            extra={"reason": f"{ENV_URL} is not set", "effect": "the gateway accepts any verifier name"},
        )
        return
    redis = None
    try:
        redis = connect(retries=4, socket_timeout=10.0)
        await verifier_catalog.publish(redis, catalog())
        log.info("verifier catalog published", extra={"key": verifier_catalog.KEY})
    except Exception as e:  # scoring needs no Redis: an unreachable one costs only the gateway's check
        log.warning(
            "could not publish the verifier catalog",
            extra={"key": verifier_catalog.KEY, "error": f"{type(e).__name__}: {e}"},
        )
    finally:
        if redis is not None:
            await redis.aclose()


async def serve(settings) -> int:
    """Serve until SIGTERM/SIGINT; a plugin that cannot load is a start-up error."""
    # Imported after logging is set up: importing the verifiers loads sympy and any plugin's side effects.
    from .server import RewardService
    from .verifiers import PluginError, load_plugins

    try:
        load_plugins(settings.plugins)  # before the catalog is published, so it names their verifiers
    except PluginError as e:
        raise ServiceStartError(str(e)) from None
    # Beside the start-up, not before it: a slow or absent Redis must not delay scoring.
    publishing = asyncio.ensure_future(publish_catalog())
    try:
        return await RewardService(settings).run()
    finally:
        publishing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publishing


def main(argv: list[str] | None = None) -> int:
    """Parse settings, set up logging, serve until SIGTERM/SIGINT; returns the process exit code."""
    return run_service("reward", load_settings, serve, argv)


if __name__ == "__main__":
    sys.exit(main())
