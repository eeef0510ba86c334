"""Where a job's step time went, from the `timeline` of its step records (pure).

The learner's part splits into its critical path (what the next step waits for: waiting for groups,
training, waiting for the previous publication, the weights snapshot) and the background publication
(writing the version: load into the publishing copy, save, probes, hash, fsync, gc; then the announce).
The pods' part is per group: how long its task waited in the stream, and the reload, engine call,
scoring and publishing of the batch it was in.
"""

from __future__ import annotations

from statistics import median

CRITICAL = ("wait_groups", "train", "wait_publication", "snapshot")
POD_PHASES = ("queued", "reload", "generate", "score", "publish")


def phase_medians(records: list[dict]) -> dict[str, dict[str, float]]:
    """Median seconds of each phase over the steps that carry a timeline (learner critical, background, pods)."""
    steps = [r for r in records if isinstance(r.get("timeline"), dict)]
    # The first step also waits for the pods' engines to start: a one-off, not the steady state.
    steady = steps[1:] if len(steps) > 1 else steps

    def medians(part: str, names) -> dict[str, float]:
        values: dict[str, list[float]] = {}
        for r in steady:
            for name, seconds in (r["timeline"].get(part) or {}).items():
                if (names is None or name in names) and isinstance(seconds, (int, float)):
                    values.setdefault(name, []).append(float(seconds))
        return {name: median(v) for name, v in values.items()}

    learner = medians("learner", None)
    critical = {k: v for k, v in learner.items() if k in CRITICAL}
    critical["other"] = (
        max(0.0, median([r["seconds"] for r in steady]) - sum(critical.values())) if steady else 0.0
    )
    return {
        "critical": critical,
        "background": {k: v for k, v in learner.items() if k not in CRITICAL},
        "pods": medians("pods", POD_PHASES),
    }
