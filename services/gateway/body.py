"""Request bodies: the size limit (413), JSON or YAML parsing (415, 422), spec problems as 422 details."""

from __future__ import annotations

import json
from typing import Any

import yaml
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.middleware.base import BaseHTTPMiddleware

from asympo.jobs.spec_yaml import load_yaml

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


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


def problem_list(problems: list[tuple[str, str]]) -> list[dict[str, str]]:
    """SpecError problems as the {"field", "error"} objects of a 422 body."""
    return [{"field": path or "(top level)", "error": rule} for path, rule in problems]


async def read_body(request: Request) -> Any:
    """The body parsed as JSON, or YAML when the content type says so (422 when it is neither)."""
    raw = await request.body()
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    try:
        if kind in YAML_TYPES:
            return load_yaml(raw.decode("utf-8"))
        if kind in ("application/json", ""):
            return json.loads(raw or b"null")
    # ValueError covers bad JSON, bad UTF-8 and YAML whose aliases expand too far; RecursionError: absurdly
    # deep nesting. The parser's message is cut short: it may quote the body.
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        error = f"cannot parse the body: {str(exc)[:300]}"
        raise HTTPException(422, {"problems": [{"field": "(body)", "error": error}]}) from None
    raise HTTPException(415, f"content type {kind!r}: send application/json or application/yaml")
