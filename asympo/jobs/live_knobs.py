"""The job fields a running job accepts changes to (REST PATCH, ControlEvent "set")."""

from __future__ import annotations

from asympo.jobs.spec_errors import SpecError

# Fields a running job accepts changes to (REST PATCH, ControlEvent "set"), by short name.
LIVE_KNOBS = {
    "max_staleness": "algorithm.max_staleness",
    "temperature": "sampling.temperature",
    "top_p": "sampling.top_p",
    "max_new_tokens": "sampling.max_new_tokens",
}


def live_knob(key: str) -> str:
    """The dotted path of a live knob given by short or dotted name; SpecError if it is not one."""
    dotted = LIVE_KNOBS.get(key, key)
    if dotted not in LIVE_KNOBS.values():
        raise SpecError([(key[:60], f"not a live knob; a running job accepts {', '.join(LIVE_KNOBS)}")])
    return dotted
