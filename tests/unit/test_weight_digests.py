"""Version digests: blake3 by default, sha256 manifests still read, unknown algorithms refused clearly."""

import hashlib
import json
import os

import blake3
import pytest

from asympo.weights.digests import (
    BLAKE3,
    SHA256,
    THREADED_BYTES,
    UnknownAlgorithm,
    file_digest,
    new_hasher,
    version_digest,
)
from asympo.weights.manifest import VersionManifest, WeightsError, manifest_text, parse_manifest


def test_file_digest_is_the_algorithm_of_the_bytes_big_or_small(tmp_path):
    for size in (0, 1000, THREADED_BYTES + 12345):  # the last goes through mmap and threads
        data = os.urandom(size)
        f = tmp_path / f"f{size}"
        f.write_bytes(data)
        assert file_digest(f, BLAKE3) == blake3.blake3(data).hexdigest()
        assert file_digest(f, SHA256) == hashlib.sha256(data).hexdigest()


def test_version_digest_binds_sizes_for_blake3_only():
    files, sizes = {"b": "22", "a": "11"}, {"a": 1, "b": 2}
    d = version_digest(files, sizes, BLAKE3)
    assert len(d) == 64 and d == version_digest(dict(reversed(files.items())), sizes, BLAKE3)
    assert version_digest(files, {"a": 1, "b": 3}, BLAKE3) != d
    legacy = hashlib.sha256(b"a\x0011\nb\x0022\n").hexdigest()  # the format sha256 versions were written in
    assert version_digest(files, {}, SHA256) == legacy
    with pytest.raises(UnknownAlgorithm, match="md5"):
        new_hasher("md5")


def _manifest(**kw) -> VersionManifest:
    fields = dict(job_id="j", version=1, step=1, sha256="ab" * 32, bytes=3, files={"w": "cd" * 32})
    return VersionManifest(**{**fields, **kw})


def test_manifest_names_its_algorithm_and_round_trips():
    m = _manifest(sizes={"w": 3})
    data = json.loads(manifest_text(m))
    assert data["algorithm"] == "blake3" and data["digest"] == m.sha256 and "sha256" not in data
    assert parse_manifest(manifest_text(m), "x") == m and m.digest == m.sha256


def test_a_manifest_written_before_blake3_reads_as_sha256():
    old = {"job_id": "j", "version": 1, "step": 1, "sha256": "ab" * 32, "bytes": 3, "files": {"w": "cd"},
           "probes": [], "created_at": 0.0}  # fmt: skip
    m = parse_manifest(json.dumps(old), "old")
    assert m.algorithm == SHA256 and m.sha256 == "ab" * 32 and m.sizes == {}


def test_unknown_algorithm_or_missing_sizes_are_refused_by_name():
    data = json.loads(manifest_text(_manifest(sizes={"w": 3})))
    with pytest.raises(WeightsError, match="hashed with 'md5', which this asympo cannot check"):
        parse_manifest(json.dumps({**data, "algorithm": "md5"}), "m")
    with pytest.raises(WeightsError, match="does not give the size of every file"):
        parse_manifest(json.dumps({**data, "sizes": {}}), "m")
    with pytest.raises(WeightsError, match="unreadable"):
        parse_manifest("{", "m")
