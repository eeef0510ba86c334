"""The weight store with a real model: atomic versions, verification, probes, gRPC fetch."""

import asyncio
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from asympo.jobs.spec import TinyModelSpec
from asympo.models.tiny import build_model
from asympo.proto.v1 import learner_pb2, learner_pb2_grpc
from asympo.runtime.grpc_server import GrpcServer
from asympo.weights.integrity import hash_contents
from asympo.weights.probes import compute_probes
from asympo.weights.store import (
    MANIFEST,
    WeightsError,
    gc_versions,
    list_versions,
    local_path,
    read_manifest,
    verify_version,
    write_version,
)
from asympo.weights.transfer import fetch_version, fetch_weights_rpc, iter_weight_chunks


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_written_version_loads_back_identically_and_is_announced(tmp_path, tiny):
    model, tok = tiny
    pv, path = write_version(tmp_path, "job1", 3, 30, model, tok)
    assert path == tmp_path / "job1" / "v3" and local_path(pv.uri) == path.resolve()
    assert (pv.job_id, pv.version, pv.step) == ("job1", 3, 30) and pv.bytes > 0
    manifest = verify_version(path, pv.sha256)
    assert manifest.sha256 == pv.sha256 and "model.safetensors" in manifest.files
    assert len(manifest.probes) >= 3 and all(lp < 0 for p in manifest.probes for lp in p.logprobs)
    loaded = AutoModelForCausalLM.from_pretrained(path).eval()
    x = torch.tensor([tok("12+34=46").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=x).logits, model.eval()(input_ids=x).logits, atol=0, rtol=0
        )
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], (
        "temporary directories left behind"
    )


def test_probes_follow_the_weights(tmp_path, tiny):
    model, tok = tiny
    before = compute_probes(model, tok)
    assert compute_probes(model, tok) == before
    changed = build_model(TinyModelSpec(seed=1), tok)
    assert compute_probes(changed, tok) != before


def test_digest_is_deterministic_and_sensitive(tmp_path, tiny):
    model, tok = tiny
    _, path = write_version(tmp_path, "j", 0, 0, model, tok)
    contents = hash_contents(path)
    assert hash_contents(path) == contents and MANIFEST not in contents.files
    assert contents.digest == read_manifest(path).sha256 and contents.bytes == read_manifest(path).bytes
    flip_byte(path / "model.safetensors")
    with pytest.raises(WeightsError, match="model.safetensors is corrupt"):
        verify_version(path)
    flip_byte(path / "model.safetensors")
    verify_version(path)
    (path / "extra.bin").write_bytes(b"x")
    with pytest.raises(WeightsError, match="extra.bin is not part of the version"):
        verify_version(path)
    (path / "extra.bin").unlink()
    (path / "tokenizer.json").unlink()
    with pytest.raises(WeightsError, match="tokenizer.json is missing"):
        verify_version(path)


def test_a_failed_write_leaves_nothing_and_same_version_twice(tmp_path, tiny):
    model, tok = tiny

    class Exploding:
        def save_pretrained(self, *a, **k):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_version(tmp_path, "j", 1, 1, model, Exploding())
    assert list_versions(tmp_path, "j") == [] and not list((tmp_path / "j").iterdir())
    pv1, _ = write_version(tmp_path, "j", 1, 1, model, tok)
    pv1b, _ = write_version(tmp_path, "j", 1, 1, model, tok)  # identical weights: idempotent
    assert pv1b.sha256 == pv1.sha256
    other = build_model(TinyModelSpec(seed=2), tok)
    with pytest.raises(WeightsError, match="already exists with different weights"):
        write_version(tmp_path, "j", 1, 1, other, tok)


def test_gc_keeps_the_newest_and_version_zero(tmp_path, tiny):
    model, tok = tiny
    for v in range(6):
        write_version(tmp_path, "j", v, v, model, tok, keep=10)
    assert gc_versions(tmp_path, "j", keep=2) == [1, 2, 3]
    assert list_versions(tmp_path, "j") == [0, 4, 5]
    write_version(tmp_path, "j", 6, 6, model, tok, keep=2)
    assert list_versions(tmp_path, "j") == [0, 5, 6]
    # A version superseded only moments ago may still be loading on a pod: it stays for the grace period.
    write_version(tmp_path, "j", 7, 7, model, tok, keep=2, grace_s=3600)
    assert list_versions(tmp_path, "j") == [0, 5, 6, 7]
    assert gc_versions(tmp_path, "j", keep=2, grace_s=3600) == []
    assert gc_versions(tmp_path, "j", keep=2) == [5]


def test_chunks_cover_every_file_in_order(tmp_path, tiny):
    model, tok = tiny
    pv, path = write_version(tmp_path, "j", 0, 0, model, tok)
    chunks = list(iter_weight_chunks(path, chunk_bytes=100_000))
    assert {c.sha256 for c in chunks} == {pv.sha256} and chunks[-1].path == MANIFEST
    sizes = {}
    for c in chunks:
        assert c.offset == sizes.get(c.path, 0)
        sizes[c.path] = c.offset + len(c.data)
        assert c.file_size == (path / c.path).stat().st_size
    assert sizes == {p.name: p.stat().st_size for p in path.iterdir()}


class _Learner(learner_pb2_grpc.LearnerServiceServicer):
    def __init__(self, store):
        self.store = store

    async def FetchWeights(self, request, context):
        async for chunk in fetch_weights_rpc(request, context, self.store, serving="j"):
            yield chunk


class _Evil(learner_pb2_grpc.LearnerServiceServicer):
    async def FetchWeights(self, request, context):
        yield learner_pb2.WeightChunk(path="../../escape.txt", offset=0, data=b"x", file_size=1)


class _Truncating(_Learner):
    """Streams a stored version but cuts the last chunk of the weights file in half."""

    async def FetchWeights(self, request, context):
        chunks = [c async for c in fetch_weights_rpc(request, context, self.store, serving="j")]
        last = max(i for i, c in enumerate(chunks) if c.path == "model.safetensors")
        chunks[last].data = chunks[last].data[: len(chunks[last].data) // 2]
        for chunk in chunks:
            yield chunk


def _serve(servicer, fn):
    async def go():
        server = GrpcServer("127.0.0.1", 0)
        server.add_service(
            learner_pb2_grpc.add_LearnerServiceServicer_to_server, servicer, "asympo.v1.LearnerService"
        )
        port = await server.start()
        try:
            return await asyncio.to_thread(fn, f"127.0.0.1:{port}")
        finally:
            await server.stop(0)

    return asyncio.run(go())


def test_fetch_over_grpc(tmp_path, tiny):
    model, tok = tiny
    store, dest = tmp_path / "store", tmp_path / "pod"
    pv, path = write_version(store, "j", 2, 2, model, tok)
    fetched = _serve(_Learner(store), lambda t: fetch_version(t, "j", 2, dest, expected_sha256=pv.sha256))
    assert fetched == dest / "j" / "v2" and verify_version(fetched, pv.sha256).version == 2
    assert read_manifest(fetched).probes == read_manifest(path).probes
    assert AutoModelForCausalLM.from_pretrained(fetched) is not None

    with pytest.raises(WeightsError, match="NOT_FOUND"):
        _serve(_Learner(store), lambda t: fetch_version(t, "j", 9, dest))
    with pytest.raises(WeightsError, match=r"model.safetensors: announced \d+ bytes, received \d+"):
        _serve(_Truncating(store), lambda t: fetch_version(t, "j", 2, tmp_path / "pod4"))
    # The learner trusts its own store and sends the flipped byte; the pod hashing the stream refuses it.
    flip_byte(path / "model.safetensors")
    with pytest.raises(WeightsError, match="model.safetensors is corrupt"):
        _serve(_Learner(store), lambda t: fetch_version(t, "j", 2, tmp_path / "pod2"))
    # A file whose size is not the manifest's is refused by the learner itself.
    with (path / "tokenizer.json").open("ab") as fh:
        fh.write(b" ")
    with pytest.raises(WeightsError, match="DATA_LOSS.*tokenizer.json is corrupt"):
        _serve(_Learner(store), lambda t: fetch_version(t, "j", 2, tmp_path / "pod5"))
    with pytest.raises(WeightsError, match="refusing chunk path"):
        _serve(_Evil(), lambda t: fetch_version(t, "j", 2, tmp_path / "pod3"))
    assert not (tmp_path / "escape.txt").exists()
    for root in (tmp_path / "pod2", tmp_path / "pod3", tmp_path / "pod4", tmp_path / "pod5"):
        assert not [p for p in (root / "j").iterdir()], "partial download left behind"


def test_unreachable_learner_is_named(tmp_path):
    with pytest.raises(WeightsError, match="127.0.0.1:1 is unreachable"):
        fetch_version("127.0.0.1:1", "j", 0, tmp_path, timeout_s=5)


def test_manifest_is_json(tmp_path, tiny):
    model, tok = tiny
    _, path = write_version(tmp_path, "j", 0, 0, model, tok)
    data = json.loads((path / MANIFEST).read_text())
    assert {"job_id", "version", "step", "digest", "algorithm", "bytes", "files", "sizes", "probes",
            "created_at"} <= set(data)  # fmt: skip
    assert data["algorithm"] == "blake3" and data["sizes"]["model.safetensors"] > 0
