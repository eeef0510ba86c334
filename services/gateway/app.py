"""The REST API (FastAPI): jobs, control, step metrics, versions and pods, all from Redis.

Every `/v1` route requires `Authorization: Bearer <ASYMPO_API_TOKEN>` (401 without, 403 wrong);
`/healthz` and `/metrics` are open. Job specs come as JSON or YAML and are validated by `JobSpec`,
whose errors name the field (422). Bodies over `max_body_bytes` get 413; nothing a client sends
yields a 500.
"""

from __future__ import annotations

import json
import secrets
import time
from contextlib import asynccontextmanager
from typing import Any

import yaml
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.middleware.base import BaseHTTPMiddleware

from asympo.bus import QUEUE, EntryError, JobKeys, connect, decode, publish
from asympo.jobs.records import FINAL_STATES, JobRecord, active_job, get_job, list_jobs, list_pods, put_job
from asympo.jobs.spec import JobSpec, SpecError, live_knob
from asympo.proto.v1 import bus_pb2

from .settings import GatewaySettings

POD_MAX_AGE_S = 120.0
_bearer = HTTPBearer(auto_error=False)
_CREDENTIALS = Depends(_bearer)


class GatewayMetrics:
    """asympo_gateway_* request metrics."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("asympo_gateway_requests", "requests by route and status", ["route", "status"],
                                registry=r)  # fmt: skip
        self.seconds = Histogram("asympo_gateway_request_seconds", "request latency", ["route"], registry=r)


class BodyLimit(BaseHTTPMiddleware):
    """413 for bodies over the limit, by Content-Length or by what actually arrives."""

    def __init__(self, app, limit: int):
        super().__init__(app)
        self.limit = limit

    async def dispatch(self, request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return JSONResponse({"detail": f"request body over {self.limit} bytes"}, status_code=413)
        if request.method in ("POST", "PATCH", "PUT"):
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > self.limit:
                    return JSONResponse({"detail": f"request body over {self.limit} bytes"}, status_code=413)
            request._body = body  # starlette reads the cached body from here later
        return await call_next(request)


def _problems(problems: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"field": path or "(top level)", "error": rule} for path, rule in problems]


def _job_id(spec: JobSpec) -> str:
    stem = spec.name or "job"
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


async def _body_data(request: Request) -> Any:
    """The body parsed as JSON, or YAML when the content type says so (422 when it is neither)."""
    raw = await request.body()
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    try:
        if kind in ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"):
            return yaml.safe_load(raw.decode("utf-8"))
        if kind in ("application/json", ""):
            return json.loads(raw or b"null")
    except (ValueError, yaml.YAMLError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise HTTPException(
            422, {"problems": [{"field": "(body)", "error": f"cannot parse the body: {exc}"}]}
        ) from None
    raise HTTPException(415, f"content type {kind!r}: send application/json or application/yaml")


def create_app(settings: GatewaySettings, redis=None) -> FastAPI:
    """The gateway application; `redis` defaults to a client of settings.redis_url."""
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if redis is None:
            app.state.redis = connect(settings.redis_url)
        yield
        if redis is None:
            await app.state.redis.aclose()

    app = FastAPI(title="asympo gateway", version="1", lifespan=lifespan)
    if redis is not None:
        app.state.redis = redis  # also without a lifespan run (ASGI test clients)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    token = settings.api_token.encode()

    def authorized(credentials: HTTPAuthorizationCredentials | None = _CREDENTIALS) -> None:
        if credentials is None:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(credentials.credentials.encode(), token):
            raise HTTPException(403, "wrong token")

    def db(request: Request):
        return request.app.state.redis

    async def existing(job_id: str, r) -> JobRecord:
        try:
            JobKeys(job_id)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        job = await get_job(r, job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return job

    @app.middleware("http")
    async def count(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        metrics.requests.labels(name, str(response.status_code)).inc()
        metrics.seconds.labels(name).observe(time.perf_counter() - t0)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = [{"field": ".".join(str(x) for x in e["loc"][1:]) or "(body)", "error": e["msg"]}
                    for e in exc.errors()]  # fmt: skip
        return JSONResponse({"detail": {"problems": problems}}, status_code=422)

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request):
        try:
            await db(request).ping()
        except Exception as exc:  # any Redis failure makes the gateway unready, never a 500
            return JSONResponse({"status": "unavailable", "redis": str(exc)}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    v1 = dict(dependencies=[Depends(authorized)])

    @app.post("/v1/jobs", status_code=201, **v1)
    async def create_job(request: Request) -> dict:
        """Validate a job spec (JSON or YAML) and queue it."""
        data = await _body_data(request)
        try:
            spec = JobSpec.from_data(data, "request body")
        except SpecError as exc:
            raise HTTPException(422, {"problems": _problems(exc.problems)}) from None
        job = JobRecord(job_id=_job_id(spec), spec=spec)
        r = db(request)
        await put_job(r, job)
        await r.rpush(QUEUE, job.job_id)
        return job.model_dump(mode="json")

    @app.get("/v1/jobs", **v1)
    async def jobs(request: Request, state: str | None = None) -> list[dict]:
        """All jobs, oldest first (optionally one state), without their specs."""
        records = await list_jobs(db(request))
        return [r.model_dump(mode="json", exclude={"spec"}) | {"name": r.spec.name}
                for r in records if state is None or r.state == state]  # fmt: skip

    @app.get("/v1/jobs/{job_id}", **v1)
    async def job(job_id: str, request: Request) -> dict:
        """A job with its spec, its newest step record and its queue position."""
        r = db(request)
        record = await existing(job_id, r)
        out = record.model_dump(mode="json")
        recent = [json.loads(f[b"json"]) for _, f in await r.xrevrange(JobKeys(job_id).steps, count=50)]
        out["last_step"] = recent[0] if recent else None
        # Evaluations on the pods are records of their own, often followed at once by a training step.
        out["last_eval"] = next((rec for rec in recent if rec.get("heldout_accuracy") is not None), None)
        if record.state == "queued":
            queue = [x.decode() for x in await r.lrange(QUEUE, 0, -1)]
            out["queue_position"] = queue.index(job_id) if job_id in queue else None
        return out

    async def control(job_id: str, request: Request, kind: str) -> dict:
        r = db(request)
        record = await existing(job_id, r)
        if record.state in FINAL_STATES:
            raise HTTPException(409, f"job {job_id} already {record.state}")
        if kind == "cancel" and record.state == "queued":
            # No learner has it yet: take it out of the queue here.
            await r.lrem(QUEUE, 0, job_id)
            record.state, record.message = "cancelled", "cancelled while queued"
            await put_job(r, record)
        elif kind in ("pause", "resume") and record.state == "queued":
            raise HTTPException(409, f"job {job_id} is queued: only cancel applies")
        else:
            await publish(r, JobKeys(job_id).control, [bus_pb2.ControlEvent(job_id=job_id, kind=kind)])
        return {"job_id": job_id, "requested": kind, "state": record.state}

    @app.post("/v1/jobs/{job_id}:pause", status_code=202, **v1)
    async def pause(job_id: str, request: Request) -> dict:
        """Ask the learner to pause after the step in progress."""
        return await control(job_id, request, "pause")

    @app.post("/v1/jobs/{job_id}:resume", status_code=202, **v1)
    async def resume(job_id: str, request: Request) -> dict:
        """Ask the learner to resume a paused job."""
        return await control(job_id, request, "resume")

    @app.post("/v1/jobs/{job_id}:cancel", status_code=202, **v1)
    async def cancel(job_id: str, request: Request) -> dict:
        """Cancel a job (at once when queued; after the step in progress when running)."""
        return await control(job_id, request, "cancel")

    @app.patch("/v1/jobs/{job_id}", status_code=202, **v1)
    async def knobs(job_id: str, request: Request) -> dict:
        """Change live knobs, e.g. {"max_staleness": 0, "temperature": 0.8}; validated like the spec."""
        r = db(request)
        record = await existing(job_id, r)
        data = await _body_data(request)
        if not isinstance(data, dict) or not data:
            raise HTTPException(
                422, {"problems": [{"field": "(body)", "error": "send an object of knob: value"}]}
            )
        try:
            dotted = {live_knob(str(k)): v for k, v in data.items()}
            updated = record.spec.with_overrides(dotted)
        except SpecError as exc:
            raise HTTPException(422, {"problems": _problems(exc.problems)}) from None
        if record.state in FINAL_STATES:
            raise HTTPException(409, f"job {job_id} already {record.state}")
        if record.state == "queued":
            record.spec = updated  # not started: the learner reads it from the record
            await put_job(r, record)
        else:
            events = [bus_pb2.ControlEvent(job_id=job_id, kind="set", key=k, value=json.dumps(v))
                      for k, v in dotted.items()]  # fmt: skip
            await publish(r, JobKeys(job_id).control, events)
        return {"job_id": job_id, "requested": dotted, "state": record.state}

    @app.get("/v1/jobs/{job_id}/metrics", **v1)
    async def step_metrics(job_id: str, request: Request, last: int = Query(100, ge=1)) -> list[dict]:
        """The newest `last` step records, oldest first."""
        r = db(request)
        await existing(job_id, r)
        entries = await r.xrevrange(JobKeys(job_id).steps, count=min(last, settings.metrics_limit))
        out = []
        for _, fields in reversed(entries):
            try:
                out.append(json.loads(fields[b"json"]))
            except (KeyError, ValueError):
                continue
        return out

    @app.get("/v1/jobs/{job_id}/versions", **v1)
    async def versions(job_id: str, request: Request, last: int = Query(100, ge=1, le=10_000)) -> list[dict]:
        """The newest published policy versions, oldest first."""
        r = db(request)
        await existing(job_id, r)
        out = []
        for _, fields in reversed(await r.xrevrange(JobKeys(job_id).policy, count=last)):
            try:
                pv = decode(fields, bus_pb2.PolicyVersion, job_id)
            except EntryError:
                continue
            out.append({"version": pv.version, "step": pv.step, "uri": pv.uri, "sha256": pv.sha256,
                        "bytes": pv.bytes, "created_at": pv.created_at})  # fmt: skip
        return out

    @app.get("/v1/pods", **v1)
    async def pods(request: Request, job: str | None = None, max_age_s: float = POD_MAX_AGE_S) -> list[dict]:
        """Rollout pods of a job (default: the active one) with a heartbeat younger than max_age_s."""
        r = db(request)
        if job is None:
            active = await active_job(r)
            if active is None:
                return []
            job = active.job_id
        else:
            await existing(job, r)
        return [p.model_dump(mode="json") for p in await list_pods(r, job, max_age_s)]

    return app
