"""Hash once: the learner hashes what it writes (blake3), a pod reading the shared store in place trusts the
manifest (sizes checked, contents not), a pod fetching over FetchWeights hashes the stream as it arrives."""

import asyncio
import json

import blake3
import pytest

from asympo.proto.v1 import learner_pb2_grpc
from asympo.runtime.grpc_server import GrpcServer
from asympo.weights import integrity
from asympo.weights.digests import SHA256, file_digest, version_digest
from asympo.weights.store import (
    MANIFEST,
    PHASES,
    WeightsError,
    check_version,
    read_manifest,
    verify_version,
    write_version,
)
from asympo.weights.transfer import fetch_version, fetch_weights_rpc
from services.rollout.policy import ReloadRefused, materialize


@pytest.fixture
def stored(tmp_path, tiny):
    return write_version(tmp_path / "store", "j", 1, 1, *tiny)


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def no_hashing(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a file was hashed")

    monkeypatch.setattr(integrity, "file_digest", refuse)


def test_the_version_is_hashed_with_blake3_and_says_so(stored):
    pv, path = stored
    m = read_manifest(path)
    weights = (path / "model.safetensors").read_bytes()
    assert m.algorithm == "blake3" and m.sha256 == pv.sha256 and len(pv.sha256) == 64
    assert m.files["model.safetensors"] == blake3.blake3(weights).hexdigest()
    assert m.sizes["model.safetensors"] == len(weights) and m.bytes == sum(m.sizes.values())
    assert version_digest(m.files, m.sizes, "blake3") == pv.sha256


def test_trusted_in_place_read_does_not_hash_and_misses_a_same_size_flip(stored, tmp_path, monkeypatch):
    pv, path = stored
    flip_byte(path / "model.safetensors")
    with monkeypatch.context() as m:
        no_hashing(m)
        assert check_version(path, pv.sha256).version == 1  # trusted: the flip goes unseen, nothing hashed
        timings = {}
        local = materialize(pv, tmp_path / "pod", None, timings=timings)
        assert local.path == path.resolve() and not local.fetched and set(timings) == {"fetch", "verify"}
    with pytest.raises(WeightsError, match="model.safetensors is corrupt"):
        verify_version(path, pv.sha256)
    with pytest.raises(ReloadRefused, match="model.safetensors is corrupt") as refused:
        materialize(pv, tmp_path / "pod", None, full_verify=True)
    assert refused.value.reason == "verify"


def test_trusted_read_refuses_sizes_files_and_digests_that_differ(stored, tmp_path):
    pv, path = stored
    other = pv.__class__()
    other.CopyFrom(pv)
    other.sha256 = "ab" * 32
    with pytest.raises(ReloadRefused, match="≠ the published abababab"):
        materialize(other, tmp_path / "pod", None)
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data + b"\0")
    with pytest.raises(
        ReloadRefused, match=r"model.safetensors is corrupt \(\d+ bytes, the manifest says \d+\)"
    ):
        materialize(pv, tmp_path / "pod", None)
    weights.write_bytes(data)
    check_version(path, pv.sha256)
    (path / "extra.bin").write_bytes(b"x")
    with pytest.raises(WeightsError, match="extra.bin is not part of the version"):
        check_version(path, pv.sha256)
    (path / "extra.bin").unlink()
    # Sizes are bound into the digest: a manifest whose sizes were edited no longer matches its own digest.
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["sizes"]["model.safetensors"] += 1
    (path / MANIFEST).write_text(json.dumps(manifest))
    weights.write_bytes(data + b"\0")
    with pytest.raises(WeightsError, match="directory digest .* ≠ manifest"):
        check_version(path, pv.sha256)


def _make_legacy(path):
    """Rewrite a version's manifest as versions were written before blake3: sha256, no sizes."""
    manifest = json.loads((path / MANIFEST).read_text())
    files = {rel: file_digest(path / rel, SHA256) for rel in manifest["files"]}
    for key in ("digest", "algorithm", "sizes"):
        manifest.pop(key)
    manifest.update(sha256=version_digest(files, {}, SHA256), files=files)
    (path / MANIFEST).write_text(json.dumps(manifest))
    return manifest["sha256"]


def test_a_version_written_before_blake3_is_verified_fully(stored, tmp_path):
    pv, path = stored
    pv.sha256 = _make_legacy(path)
    assert read_manifest(path).algorithm == "sha256"
    assert materialize(pv, tmp_path / "pod", None).manifest.sha256 == pv.sha256
    fetched = _serve(
        tmp_path / "store", lambda t: fetch_version(t, "j", 1, tmp_path / "pod", expected_sha256=pv.sha256)
    )
    assert read_manifest(fetched).algorithm == "sha256"
    flip_byte(path / "model.safetensors")
    with pytest.raises(WeightsError, match="model.safetensors is corrupt"):
        check_version(path, pv.sha256)  # no sizes to trust: checked the old way, by hashing


class _Learner(learner_pb2_grpc.LearnerServiceServicer):
    def __init__(self, store, tamper=None):
        self.store, self.tamper = store, tamper

    async def FetchWeights(self, request, context):
        async for chunk in fetch_weights_rpc(request, context, self.store, serving="j"):
            yield self.tamper(chunk) if self.tamper else chunk


def _serve(store, fn, tamper=None):
    async def go():
        server = GrpcServer("127.0.0.1", 0)
        server.add_service(
            learner_pb2_grpc.add_LearnerServiceServicer_to_server,
            _Learner(store, tamper),
            "asympo.v1.LearnerService",
        )
        port = await server.start()
        try:
            return await asyncio.to_thread(fn, f"127.0.0.1:{port}")
        finally:
            await server.stop(0)

    return asyncio.run(go())


def _flip_in_transit(chunk):
    if chunk.path == "model.safetensors" and chunk.data:
        data = bytearray(chunk.data)
        data[len(data) // 2] ^= 0x01
        chunk.data = bytes(data)
    return chunk


def test_a_fetch_is_verified_as_it_streams(stored, tmp_path, monkeypatch):
    pv, path = stored
    store, pods = tmp_path / "store", tmp_path / "pods"
    with monkeypatch.context() as m:
        no_hashing(m)  # neither the learner nor the pod reads the files back to hash them
        got = _serve(store, lambda t: fetch_version(t, "j", 1, pods / "a", expected_sha256=pv.sha256))
    assert verify_version(got, pv.sha256).sha256 == pv.sha256
    with pytest.raises(WeightsError, match="model.safetensors is corrupt"):
        _serve(
            store, lambda t: fetch_version(t, "j", 1, pods / "b", expected_sha256=pv.sha256), _flip_in_transit
        )
    with pytest.raises(WeightsError, match="a different version"):
        _serve(store, lambda t: fetch_version(t, "j", 1, pods / "c", expected_sha256="ab" * 32))
    for root in (pods / "b", pods / "c"):
        assert not list((root / "j").iterdir()), "partial download left behind"


def test_materialize_fetches_and_times_both_phases(stored, tmp_path):
    pv, _ = stored
    remote = pv.__class__()
    remote.CopyFrom(pv)
    remote.uri = "grpc://learner/j/v1"  # not mounted here: fetched
    timings = {}
    local = _serve(tmp_path / "store", lambda t: materialize(remote, tmp_path / "pod", t, timings=timings))
    assert local.fetched and local.manifest.sha256 == pv.sha256 and timings["fetch"] > 0
    assert set(timings) == {"fetch", "verify"}


def test_write_version_reports_its_phases(tmp_path, tiny):
    timings = {}
    write_version(tmp_path, "j", 0, 0, *tiny, timings=timings)
    assert tuple(timings) == PHASES and all(s >= 0 for s in timings.values())
