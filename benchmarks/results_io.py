"""What every benchmark writes: its result as JSON, with the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def machine(**extra) -> dict:
    """CPU count, Python and platform (plus anything the benchmark adds, e.g. torch's version)."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **extra,
    }


def write_result(result: dict, out: Path) -> None:
    """Write the result JSON (creating its folder)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
