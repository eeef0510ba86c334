"""Streaming a stored policy version over gRPC (LearnerService.FetchWeights, and RolloutService.FetchWeights
between pods): server side and pod side.

The learner serves a version after the trusted check (asympo.weights.integrity.check_version: the store
is its own, so sizes are checked, contents are not hashed again); the pod hashes the bytes as they
arrive (asympo.weights.receiving), so a version crosses the wire verified with one pass over it. A pod
passes on the copies it fetched the same way (the peer relay): the receiver's hashing against the
manifest and the announced digest is what makes a relayed copy trustworthy, not the relay.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc

from asympo.bus.keys import JobKeys
from asympo.proto.v1 import learner_pb2, learner_pb2_grpc, rollout_pb2_grpc
from asympo.runtime.grpc_auth import ClientAuth
from asympo.weights.digests import BLOCK_BYTES
from asympo.weights.integrity import check_version, content_files
from asympo.weights.leftovers import scratch_dir
from asympo.weights.manifest import MANIFEST, WeightsError
from asympo.weights.receiving import VersionReceiver
from asympo.weights.store import version_dir

# Bigger chunks mean fewer messages (and Python iterations) per GB on both ends; below gRPC's default
# receive limit of 4 MiB, so any client can read them.
CHUNK_BYTES = 2 * BLOCK_BYTES

# Marks a job directory as a pod's fetched copies (--weights-dir): only marked directories are pruned
# by the pod, and only marked directories are served to peer pods.
FETCHED_MARK = ".asympo-fetched"


def iter_weight_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[learner_pb2.WeightChunk]:
    """Every file of a version that passes the trusted check, manifest last, as ordered chunks naming file
    and offset; WeightsError if a file is not the size it had (the pod hashes what it receives)."""
    path = Path(path)
    manifest = check_version(path)
    for f in [*content_files(path), path / MANIFEST]:
        rel = f.relative_to(path).as_posix()
        size = f.stat().st_size
        sent = 0
        with f.open("rb") as fh:
            while True:
                data = fh.read(chunk_bytes)
                if data or sent == 0:
                    yield learner_pb2.WeightChunk(
                        path=rel, offset=sent, data=data, file_size=size, sha256=manifest.sha256,
                        version=manifest.version,
                    )  # fmt: skip
                sent += len(data)
                if len(data) < chunk_bytes:
                    break
        if sent != size:
            raise WeightsError(f"{path}: file {rel} changed while it was sent ({sent} bytes of {size})")


def _request_problem(
    request: learner_pb2.FetchWeightsRequest, store: Path, serving: str | None, who: str = "learner"
):
    """(status code, message) refusing the request, or None for a request this server may answer."""
    try:
        JobKeys(request.job_id)  # the job-id rule of every key: no "/", no leading ".", so no "../x"
    except ValueError as exc:
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if request.version < 0:
        return grpc.StatusCode.INVALID_ARGUMENT, f"version must be >= 0, got {request.version}"
    if serving is None:
        return grpc.StatusCode.NOT_FOUND, f"this {who} serves no job now, so no version of {request.job_id}"
    if request.job_id != serving:
        return grpc.StatusCode.PERMISSION_DENIED, (
            f"this {who} serves job {serving!r}, not {request.job_id!r}: ask that job's learner"
        )
    root = Path(store).resolve()
    if not version_dir(root, request.job_id, request.version).resolve().is_relative_to(root):
        # A symlink inside the store pointing out of it: still never read outside the store.
        return (
            grpc.StatusCode.INVALID_ARGUMENT,
            f"version {request.version} of {request.job_id} is outside the store",
        )
    return None


async def fetch_weights_rpc(
    request: learner_pb2.FetchWeightsRequest,
    context,
    store: Path,
    *,
    serving: str | None,
    who: str = "learner",
    fetched_only: bool = False,
):
    """The body of FetchWeights: stream a stored version of `serving`, the job this server works for;
    INVALID_ARGUMENT, PERMISSION_DENIED, NOT_FOUND or DATA_LOSS otherwise.

    `fetched_only` (a pod serving peers): only job directories marked as fetched copies are served.
    """
    problem = _request_problem(request, store, serving, who)
    if problem is not None:
        await context.abort(*problem)
    path = version_dir(store, request.job_id, request.version)
    if fetched_only and not (path.parent / FETCHED_MARK).is_file():
        await context.abort(
            grpc.StatusCode.NOT_FOUND, f"this {who} holds no fetched copies of job {request.job_id}"
        )
    if not (path / MANIFEST).is_file():
        await context.abort(
            grpc.StatusCode.NOT_FOUND,
            f"version {request.version} of job {request.job_id} is not stored on this {who}",
        )
    chunks = iter_weight_chunks(path)
    while True:
        try:
            # Checking and reading are blocking: keep them off the event loop.
            chunk = await asyncio.to_thread(next, chunks, None)
        except (WeightsError, OSError) as exc:
            # OSError: the version was deleted under the stream (a pod pruning an old copy).
            await context.abort(grpc.StatusCode.DATA_LOSS, str(exc))
        if chunk is None:
            return
        yield chunk


def fetch_version(
    target: str,
    job_id: str,
    version: int,
    dest_root: Path,
    *,
    expected_sha256: str | None = None,
    timeout_s: float = 600.0,
    auth: ClientAuth | None = None,
    from_peer: bool = False,
) -> Path:
    """Stream a version from the learner into dest_root/{job}/v{version}, verified as it arrives (against
    `expected_sha256`, the announced digest, when given); partial downloads vanish.

    `auth`: the token (and TLS files) to present; by default $ASYMPO_GRPC_TOKEN over plaintext.
    `from_peer`: `target` is a rollout pod relaying its copy (RolloutService.FetchWeights).
    """
    try:
        JobKeys(job_id)  # the id names a directory here: never let it point elsewhere
    except ValueError as exc:
        raise WeightsError(str(exc)) from None
    auth = auth or ClientAuth.from_env()
    dest = version_dir(dest_root, job_id, version)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = scratch_dir(dest.parent, dest.name, "fetch")  # named after this process: see leftovers
    where = f"the {'pod' if from_peer else 'learner'} at {target}"
    receiver = VersionReceiver(tmp, expected_sha256, source=where)
    try:
        options = [("grpc.max_receive_message_length", 64 << 20)]
        with auth.channel(target, options=options) as channel:
            if from_peer:
                stub = rollout_pb2_grpc.RolloutServiceStub(channel)
            else:
                stub = learner_pb2_grpc.LearnerServiceStub(channel)
            request = learner_pb2.FetchWeightsRequest(job_id=job_id, version=version)
            try:
                for chunk in stub.FetchWeights(request, timeout=timeout_s, metadata=auth.metadata):
                    receiver.take(chunk)
            finally:
                receiver.close()
        receiver.finish(where)
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
        return dest
    except grpc.RpcError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            raise WeightsError(f"{where} is unreachable: {exc.details()}") from None
        raise WeightsError(
            f"{where} could not send version {version}: {exc.code().name}: {exc.details()}"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
