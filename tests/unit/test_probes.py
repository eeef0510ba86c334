"""A pod's probe check never lets NaN, inf or a missing probe pass as a match."""

import math

from asympo.weights.probes import Probe
from asympo.weights.store import VersionManifest
from services.rollout.verify import probe_mismatch

INF = float("inf")


def _manifest(*probes: Probe) -> VersionManifest:
    return VersionManifest(
        job_id="j", version=1, step=1, sha256="x", bytes=0, files={}, probes=list(probes), created_at=0.0
    )


GOOD = _manifest(Probe([1, 2, 3], 1, [-0.5, -1.0]), Probe([4, 5], 1, [-2.0]))


def test_nan_or_inf_served_is_a_mismatch():
    for bad in (math.nan, INF, -INF):
        assert probe_mismatch(GOOD, [[-0.5, bad], [-2.0]]) == INF
        assert probe_mismatch(GOOD, [[bad, -1.0], [-2.0]]) == INF  # also when it comes first


def test_nan_published_is_a_mismatch_even_if_the_engine_serves_nan_too():
    poisoned = _manifest(Probe([1, 2, 3], 1, [math.nan, -1.0]), Probe([4, 5], 1, [-INF]))
    assert probe_mismatch(poisoned, [[-0.5, -1.0], [-2.0]]) == INF
    assert probe_mismatch(poisoned, [[math.nan, -1.0], [-INF]]) == INF


def test_a_probe_the_engine_left_out_is_a_mismatch():
    assert probe_mismatch(GOOD, [[-0.5, -1.0]]) == INF
    assert probe_mismatch(GOOD, []) == INF
    assert probe_mismatch(GOOD, [[-0.5, -1.0], [-2.0], [-3.0]]) == INF
    assert probe_mismatch(GOOD, [[-0.5, -1.0], [-2.0]]) == 0.0
