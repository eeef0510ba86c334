"""The peer relay: a pod that fetched a version serves it to other pods over RolloutService.FetchWeights.

Real loopback gRPC servers built as the services build them (`services.learner.server.grpc_server`,
`services.rollout.server.grpc_server` around a real RolloutPod, no engine), real files, real Redis for
the pod records. The receiver's hashing is the integrity check: a peer's corrupt copy is refused and the
learner's fetched instead.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import grpc
import pytest

from asympo.jobs.records import JobRecord, PodStatus
from asympo.jobs.spec import TinyModelSpec
from asympo.models.tiny import build_model, build_tokenizer
from asympo.proto.v1 import learner_pb2, rollout_pb2_grpc
from asympo.runtime.grpc_auth import ClientAuth
from asympo.weights.integrity import content_files
from asympo.weights.store import MANIFEST, verify_version, write_version
from asympo.weights.transfer import FETCHED_MARK
from services.rollout.metrics import RolloutMetrics
from services.rollout.peers import choose_peer, peers_holding
from services.rollout.policy import ReloadRefused, materialize, prune_fetched
from services.rollout.status_board import StatusBoard, TokenRate

JOB = "relay-job"


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """Version 1 of JOB in a learner's store, announced with a URI no pod has mounted."""
    tok = build_tokenizer()
    pv, path = write_version(
        tmp_path_factory.mktemp("relay") / "store", JOB, 1, 1, build_model(TinyModelSpec(), tok), tok
    )
    pv.uri = f"grpc://learner/{JOB}/v1"  # not mounted on the pods: they fetch
    return pv, path


@pytest.fixture
async def learner(stored):
    """The learner's real gRPC server for JOB, on loopback: its address."""
    from services.learner.server import grpc_server
    from services.learner.settings import LearnerSettings

    settings = LearnerSettings(
        host="127.0.0.1", port=0, metrics_port=-1, weight_store=stored[1].parents[1], job_id=JOB
    )
    server = grpc_server(settings, lambda: None)
    await server.start()
    yield f"127.0.0.1:{server.port}"
    await server.stop(0)


def pod_server(tmp_path, name, example_spec):
    """A rollout pod serving JOB (no engine, no loop), its own --weights-dir, and its real gRPC server."""
    from services.rollout.pod import RolloutPod
    from services.rollout.server import grpc_server
    from services.rollout.settings import RolloutSettings

    settings = RolloutSettings(
        pod=name, host="127.0.0.1", port=0, metrics_port=-1, weights_dir=tmp_path / name
    )
    pod = RolloutPod(settings)
    pod.job = JobRecord(job_id=JOB, spec=example_spec, state="running")
    return pod, grpc_server(pod)


@pytest.fixture
async def pod_a(tmp_path, example_spec):
    """Pod A's server; its address is set as its advertise_address once the port is known."""
    pod, server = pod_server(tmp_path, "pod-a", example_spec)
    port = await server.start()
    pod.settings.advertise_address = f"127.0.0.1:{port}"
    yield pod
    await server.stop(0)


def same_files(a, b):
    names = [p.relative_to(a) for p in [*content_files(a), a / MANIFEST]]
    assert names == [p.relative_to(b) for p in [*content_files(b), b / MANIFEST]]
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


async def test_a_pod_fetches_from_a_peer_that_fetched_from_the_learner(stored, learner, pod_a, tmp_path):
    pv, path = stored
    a = await asyncio.to_thread(materialize, pv, pod_a.settings.weights_dir, learner, pod="pod-a")
    assert (a.source, a.source_target, a.fetched) == ("learner", learner, True)
    # B knows no learner at all: only pod A can have sent it the version.
    peer = pod_a.settings.advertise_address
    b = await asyncio.to_thread(materialize, pv, tmp_path / "pod-b", None, peers=[peer], pod="pod-b")
    assert (b.source, b.source_target, b.fetched) == ("peer", peer, True)
    assert b.path == tmp_path / "pod-b" / JOB / "v1" and b.manifest.sha256 == pv.sha256
    assert verify_version(b.path, pv.sha256).sha256 == pv.sha256
    same_files(path, b.path)
    # A third pod, told of both, picks one of them: the learner stays out of it.
    c = await asyncio.to_thread(materialize, pv, tmp_path / "pod-c", learner, peers=[peer], pod="pod-c")
    assert c.source == "peer" and not list((tmp_path / "pod-c" / JOB).glob(".v1.fetch*"))


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


async def test_a_corrupt_peer_copy_is_refused_and_the_learner_serves(
    stored, learner, pod_a, tmp_path, caplog
):
    pv, _ = stored
    a = await asyncio.to_thread(materialize, pv, pod_a.settings.weights_dir, learner, pod="pod-a")
    flip_byte(a.path / "model.safetensors")  # after A verified it: same size, so A still serves it
    peer = pod_a.settings.advertise_address
    with caplog.at_level(logging.WARNING, logger="services.rollout.policy"):
        b = await asyncio.to_thread(materialize, pv, tmp_path / "pod-b", learner, peers=[peer], pod="pod-b")
    assert (b.source, b.source_target) == ("learner", learner)
    assert verify_version(b.path, pv.sha256).sha256 == pv.sha256
    [warning] = [r for r in caplog.records if r.getMessage().startswith("fetch from a peer failed")]
    assert warning.peer == peer and "model.safetensors is corrupt" in warning.cause
    # With no learner to fall back on, the corrupt copy is refused outright and nothing is left behind.
    with pytest.raises(ReloadRefused, match="model.safetensors is corrupt") as refused:
        await asyncio.to_thread(materialize, pv, tmp_path / "pod-c", None, peers=[peer], pod="pod-c")
    assert refused.value.reason == "verify"
    assert [p.name for p in (tmp_path / "pod-c" / JOB).iterdir()] == [FETCHED_MARK]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_peer_that_is_down_falls_back_to_the_learner(stored, learner, tmp_path):
    pv, _ = stored
    down = f"127.0.0.1:{closed_port()}"
    b = await asyncio.to_thread(materialize, pv, tmp_path / "pod-b", learner, peers=[down], pod="pod-b")
    assert (b.source, b.source_target) == ("learner", learner)
    assert verify_version(b.path, pv.sha256).sha256 == pv.sha256


def relay_fetch(target, job_id, version, metadata=None):
    with grpc.insecure_channel(target) as channel:
        stub = rollout_pb2_grpc.RolloutServiceStub(channel)
        request = learner_pb2.FetchWeightsRequest(job_id=job_id, version=version)
        md = ClientAuth.from_env().metadata if metadata is None else metadata
        return list(stub.FetchWeights(request, timeout=30, metadata=md))


async def test_a_pod_relays_only_complete_copies_of_its_job(stored, learner, pod_a, tmp_path, example_spec):
    pv, path = stored
    peer = pod_a.settings.advertise_address

    async def refused(job_id, version, metadata=None):
        with pytest.raises(grpc.RpcError) as exc:
            await asyncio.to_thread(relay_fetch, peer, job_id, version, metadata)
        return exc.value.code()

    assert await refused(JOB, 1) == grpc.StatusCode.NOT_FOUND  # nothing fetched yet
    await asyncio.to_thread(materialize, pv, pod_a.settings.weights_dir, learner, pod="pod-a")
    chunks = await asyncio.to_thread(relay_fetch, peer, JOB, 1)
    assert chunks[-1].path == MANIFEST and {c.sha256 for c in chunks} == {pv.sha256}
    assert await refused(JOB, 1, metadata=()) == grpc.StatusCode.UNAUTHENTICATED
    assert await refused(JOB, 2) == grpc.StatusCode.NOT_FOUND
    assert await refused(JOB, -1) == grpc.StatusCode.INVALID_ARGUMENT
    assert await refused("../x", 1) == grpc.StatusCode.INVALID_ARGUMENT
    assert await refused("other-job", 1) == grpc.StatusCode.PERMISSION_DENIED
    pod_a.job = None
    assert await refused(JOB, 1) == grpc.StatusCode.NOT_FOUND  # between jobs: nothing
    pod_a.settings.advertise_address = ""
    assert await refused(JOB, 1) == grpc.StatusCode.FAILED_PRECONDITION  # not relaying at all
    # A --weights-dir that is really a store (no fetched-copies mark) is not served.
    pod, server = pod_server(tmp_path, "pod-s", example_spec)
    pod.settings.weights_dir = path.parents[1]
    peer = pod.settings.advertise_address = f"127.0.0.1:{await server.start()}"
    try:
        assert await refused(JOB, 1) == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(0)


async def test_pod_records_advertise_what_is_held(stored, learner, tmp_path, redis):
    pv, _ = stored
    await redis.delete(f"asympo:{JOB}:pods")
    board = StatusBoard(redis, RolloutMetrics(), TokenRate(), advertise="10.0.0.7:50052")
    await board.open(PodStatus(pod="pod-a", job_id=JOB, engine="hf"))
    quiet = StatusBoard(redis, RolloutMetrics(), TokenRate())  # no advertise_address: never a source
    await quiet.open(PodStatus(pod="pod-q", job_id=JOB, engine="hf"))
    assert await peers_holding(redis, pv, "pod-b") == []
    for b, name in ((board, "pod-a"), (quiet, "pod-q")):
        local = await asyncio.to_thread(materialize, pv, tmp_path / name, learner, pod=name)
        await b.served_now(local)
    assert await peers_holding(redis, pv, "pod-b") == ["10.0.0.7:50052"]
    assert await peers_holding(redis, pv, "pod-a") == []  # never itself
    other = pv.__class__()
    other.CopyFrom(pv)
    other.sha256 = "ab" * 32
    assert await peers_holding(redis, other, "pod-b") == []  # same number, another digest
    assert await peers_holding(redis, pv, "pod-b", max_age_s=-1) == []  # heartbeat too old
    await asyncio.to_thread(prune_fetched, tmp_path / "pod-a", JOB, set())
    board._refresh_held()  # what the heartbeat does
    await board.set_state("serving")
    assert await peers_holding(redis, pv, "pod-b") == []


def test_the_choice_is_fixed_per_pod_and_version_and_spreads_over_holders():
    holders = [f"10.0.0.{i}:50052" for i in range(4)]
    assert choose_peer([], "pod-1", 3) is None and choose_peer(None, "pod-1", 3) is None
    assert choose_peer(holders, "pod-1", 3) == choose_peer(list(reversed(holders)), "pod-1", 3)
    counts = {h: 0 for h in holders}
    for i in range(400):
        counts[choose_peer(holders, f"pod-{i}", 3)] += 1
    assert min(counts.values()) > 60, counts  # 100 each on average
    assert len({choose_peer(holders, "pod-1", v) for v in range(40)}) == 4  # another version, another holder
