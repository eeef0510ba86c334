"""The REST API (FastAPI): jobs, control, step metrics, versions and pods, all from Redis.

Every `/v1` route requires `Authorization: Bearer <ASYMPO_API_TOKEN>` (401 without, 403 wrong);
`/healthz` and `/metrics` are open. Job specs come as JSON or YAML and are validated by `JobSpec`,
whose errors name the field (422). Bodies over `max_body_bytes` get 413; nothing a client sends
yields a 500. The routes live in `routes/`, what they share (settings, Redis, metrics, the token
check) in `deps.py`; this module only assembles the app.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.middleware.base import BaseHTTPMiddleware

from asympo.bus import connect

from .body import BodyLimit
from .metrics import GatewayMetrics, count_requests
from .routes import control, health, jobs, progress
from .settings import GatewaySettings


@asynccontextmanager
async def _own_redis(app: FastAPI):
    """Open the app's Redis client at startup and close it at shutdown."""
    app.state.redis = connect(app.state.settings.redis_url)
    yield
    await app.state.redis.aclose()


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 for bad parameters, in the same {"detail": {"problems": [...]}} shape as spec errors."""
    problems = [{"field": ".".join(str(x) for x in e["loc"][1:]) or "(body)", "error": e["msg"]}
                for e in exc.errors()]  # fmt: skip
    return JSONResponse({"detail": {"problems": problems}}, status_code=422)


def create_app(settings: GatewaySettings, redis=None) -> FastAPI:
    """The gateway application; `redis` defaults to a client of settings.redis_url."""
    # A client passed in belongs to the caller: the app neither opens nor closes one then.
    app = FastAPI(title="asympo gateway", version="1", lifespan=_own_redis if redis is None else None)
    app.state.settings = settings
    app.state.metrics = GatewayMetrics()
    if redis is not None:
        app.state.redis = redis  # set now: ASGI test clients run no lifespan
    # The middleware added last runs first, so the counter also sees the 413s.
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(BaseHTTPMiddleware, dispatch=count_requests)
    app.add_exception_handler(RequestValidationError, _invalid)
    # Inclusion order is route order: it fixes /openapi.json and which route a 405 names in Allow.
    for module in (health, jobs, control, progress):
        app.include_router(module.router)
    return app
