"""SpecError and the strict base of every spec section: a rejected spec names each field the user wrote wrong."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Every seed feeds numpy, torch and vLLM, whose generators take 32-bit seeds.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]

# A 422 quotes at most this much of a value or a field name, and lists at most MAX_PROBLEMS problems:
# the body it answers may be a megabyte of garbage, which must not come back (or be logged) in full.
ECHO_CHARS = 60
MAX_PROBLEMS = 20


def short(value: Any, limit: int = ECHO_CHARS) -> str:
    """repr(value) cut to `limit` characters (marked with …); never builds the repr of a huge value."""
    if isinstance(value, (str, bytes)):
        text = repr(value[: limit + 1])
    elif isinstance(value, (dict, list, tuple, set)):
        text = f"<{type(value).__name__} of {len(value)} items>"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SpecError(ValueError):
    """A job spec that cannot be used; `problems` holds (field path, rule) pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None):
        where = f" in {source}" if source else ""
        if len(problems) > MAX_PROBLEMS:
            problems = [*problems[:MAX_PROBLEMS], ("", f"… and {len(problems) - MAX_PROBLEMS} more problems")]
        self.problems = problems
        lines = "\n".join(f"  {path or '(top level)'}: {rule}" for path, rule in problems)
        super().__init__(f"invalid job spec{where}:\n{lines}")


class _Strict(BaseModel):
    # NaN and infinity pass no bound (every comparison with NaN is false): refuse them outright.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _problems(exc: ValidationError, data: Any) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        kind, msg = err["type"], err["msg"]
        path = _user_path(err["loc"], data, missing=kind == "missing")
        if kind == "extra_forbidden":
            rule = "unknown field (not part of the job spec)"
        elif kind == "missing":
            rule = "required field is missing"
        else:
            rule = msg.removeprefix("Value error, ")[:300]
            if (
                "input" in err
                and kind not in ("model_type", "dict_type")
                and not isinstance(err["input"], dict)
            ):
                rule += f" (got {short(err['input'])})"
        out.append((path, rule))
    return out


def _user_path(loc: tuple, data: Any, missing: bool) -> str:
    """The field path as the user wrote it: pydantic's union tags (e.g. 'arithmetic') are dropped."""
    parts, node = [], data
    for i, key in enumerate(loc):
        names_missing_field = missing and i == len(loc) - 1
        if isinstance(node, dict) and isinstance(key, str) and key not in node and not names_missing_field:
            continue  # a discriminated-union tag, not a key the user wrote
        name = str(key)
        parts.append(
            f"[{key}]"
            if isinstance(key, int)
            else name
            if len(name) <= ECHO_CHARS
            else name[:ECHO_CHARS] + "…"
        )
        if isinstance(node, dict):
            node = node.get(key)
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            node = None
    path = ".".join(parts).replace(".[", "[")
    return path if len(path) <= 120 else path[:119] + "…"
