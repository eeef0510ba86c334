"""Open routes (no token): readiness for probes and the Prometheus page."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import MetricsDep, RedisDep

router = APIRouter()


@router.get("/healthz", include_in_schema=False)
async def healthz(redis: RedisDep):
    """200 while Redis answers, else 503 naming the error."""
    try:
        await redis.ping()
    except Exception as exc:  # any Redis failure makes the gateway unready, never a 500
        return JSONResponse({"status": "unavailable", "redis": str(exc)}, status_code=503)
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
async def prometheus(metrics: MetricsDep, redis: RedisDep):
    """The asympo_gateway_* metrics in the Prometheus text format, Redis's memory read afresh."""
    await metrics.redis_memory.refresh(redis)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
