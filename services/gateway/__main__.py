"""`python -m services.gateway [--port 8000] ...`: serve the REST API until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import sys

from asympo.runtime.settings import run_service

from .settings import load_settings


async def serve(settings) -> int:
    """Run uvicorn on the app; log 'serving' with the bound port once it listens."""
    import uvicorn

    from .app import create_app

    log = logging.getLogger("gateway")
    config = uvicorn.Config(
        create_app(settings), host=settings.host, port=settings.port, log_config=None,
        log_level=settings.log_level.lower(), access_log=False, lifespan="on",
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if task.done():
        task.result()
        return 1
    port = server.servers[0].sockets[0].getsockname()[1]
    log.info("serving", extra={"port": port, "metrics_port": port, "host": settings.host})
    await task
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse settings, set up logging, serve; returns the process exit code."""
    return run_service("gateway", load_settings, serve, argv)


if __name__ == "__main__":
    sys.exit(main())
