"""Numbers in job records and reports: JSON-safe values and trailing means for curves."""

from __future__ import annotations

import math
from typing import Any


def json_safe(value: Any) -> Any:
    """The value with every NaN or infinity (in dicts and lists too) as None: JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def trailing_mean(values: list[float | None], window: int = 10) -> list[float]:
    """Mean of each value with the window-1 before it, skipping missing ones (NaN where all are missing)."""
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - window + 1) : i + 1] if v is not None]
        out.append(sum(chunk) / len(chunk) if chunk else math.nan)
    return out
