"""Request-body schemas for /openapi.json: the routes parse bodies themselves (JSON or YAML, with their
own 413/415/422), so FastAPI cannot infer them. Declaring them documents the job spec for clients and
lets schema-driven tools (fuzzers, generated clients) send real specs."""

from __future__ import annotations

import copy
from typing import Any

from asympo.jobs.live_knobs import LIVE_KNOBS
from asympo.jobs.spec import JobSpec

from .body import YAML_TYPES


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """The schema with every local `$ref` replaced by its definition (the spec's models do not recurse)."""
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        if ref.startswith("#/$defs/"):
            return _inline(copy.deepcopy(defs[ref.removeprefix("#/$defs/")]), defs)
        # A discriminator's mapping names $defs that no longer exist once inlined; the tag field stays.
        return {k: _inline(v, defs) for k, v in node.items() if k != "discriminator"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def job_spec_body() -> dict[str, Any]:
    """openapi_extra for POST /v1/jobs: a JobSpec as JSON, or the same as YAML text."""
    schema = JobSpec.model_json_schema()
    inlined = _inline({k: v for k, v in schema.items() if k != "$defs"}, schema.get("$defs", {}))
    yaml_text = {"schema": {"type": "string", "description": "the job spec as YAML"}}
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inlined}, YAML_TYPES[0]: yaml_text},
        }
    }


def knobs_body() -> dict[str, Any]:
    """openapi_extra for PATCH /v1/jobs/{job_id}: live knobs by short or dotted name."""
    names = [*LIVE_KNOBS, *LIVE_KNOBS.values()]
    schema = {"type": "object", "minProperties": 1, "properties": dict.fromkeys(names, {"type": "number"}),
              "additionalProperties": False}  # fmt: skip
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
