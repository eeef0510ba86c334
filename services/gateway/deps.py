"""What the routes share, as FastAPI dependencies: settings, the Redis client, metrics, the bearer token."""

from __future__ import annotations

import secrets
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from asympo.bus import JobKeys
from asympo.jobs.records import JobRecord, get_job

from .metrics import GatewayMetrics
from .settings import GatewaySettings

# auto_error=False: require_token answers a missing or non-Bearer header itself, with the gateway's 401.
_bearer = HTTPBearer(auto_error=False)


def get_settings(request: Request) -> GatewaySettings:
    """The settings the app was created with."""
    return request.app.state.settings


def get_redis(request: Request) -> aioredis.Redis:
    """The app's Redis client (opened by the lifespan, or the one create_app was given)."""
    return request.app.state.redis


def get_metrics(request: Request) -> GatewayMetrics:
    """The app's asympo_gateway_* metrics."""
    return request.app.state.metrics


SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
RedisDep = Annotated[aioredis.Redis, Depends(get_redis)]
MetricsDep = Annotated[GatewayMetrics, Depends(get_metrics)]


def require_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)], settings: SettingsDep
) -> None:
    """401 without a bearer token, 403 with a wrong one."""
    if credentials is None:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    # Constant time, so response timing tells a guesser nothing about how much of the token matched.
    if not secrets.compare_digest(credentials.credentials.encode(), settings.api_token.encode()):
        raise HTTPException(403, "wrong token")


def v1_router() -> APIRouter:
    """A router for /v1 routes, every one of which requires the bearer token."""
    return APIRouter(prefix="/v1", dependencies=[Depends(require_token)])


async def existing_job(redis: aioredis.Redis, job_id: str) -> JobRecord:
    """The job's record: 422 for a malformed id, 404 for an unknown one."""
    # Called from the routes rather than declared as a dependency: a dependency runs before query
    # parameters are checked, which would turn a 422 for a bad ?last= on an unknown job into a 404.
    try:
        JobKeys(job_id)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    job = await get_job(redis, job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job
