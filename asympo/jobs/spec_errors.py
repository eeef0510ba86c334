"""SpecError and the strict base of every spec section: a rejected spec names each field the user wrote wrong."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class SpecError(ValueError):
    """A job spec that cannot be used; `problems` holds (field path, rule) pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None):
        self.problems = problems
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  {path or '(top level)'}: {rule}" for path, rule in problems)
        super().__init__(f"invalid job spec{where}:\n{lines}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
            rule = msg.removeprefix("Value error, ")
            if (
                "input" in err
                and kind not in ("model_type", "dict_type")
                and not isinstance(err["input"], dict)
            ):
                rule += f" (got {err['input']!r})"
        out.append((path, rule))
    return out


def _user_path(loc: tuple, data: Any, missing: bool) -> str:
    """The field path as the user wrote it: pydantic's union tags (e.g. 'arithmetic') are dropped."""
    parts, node = [], data
    for i, key in enumerate(loc):
        names_missing_field = missing and i == len(loc) - 1
        if isinstance(node, dict) and isinstance(key, str) and key not in node and not names_missing_field:
            continue  # a discriminated-union tag, not a key the user wrote
        parts.append(f"[{key}]" if isinstance(key, int) else key)
        if isinstance(node, dict):
            node = node.get(key)
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            node = None
    return ".".join(parts).replace(".[", "[")
