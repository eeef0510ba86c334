"""The reference loop samples with θ_{max(0, t−k)}: exactly k versions old once k updates exist."""

import pytest

from asympo.reference import VersionRing


@pytest.mark.parametrize("k", [0, 1, 4])
def test_oldest_is_exactly_k_versions_back(k):
    ring = VersionRing(k, "v0")
    for t in range(12):
        version, item = ring.oldest
        assert version == max(0, t - k) and item == f"v{version}"
        assert ring.newest_version - version == min(t, k)
        ring.push(t + 1, f"v{t + 1}")


def test_versions_must_come_in_order():
    ring = VersionRing(2, "v0")
    with pytest.raises(ValueError, match="in order"):
        ring.push(2, "v2")
