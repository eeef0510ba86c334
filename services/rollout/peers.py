"""The peer relay's bookkeeping: which versions a pod holds fetched, who holds a version, whom to ask.

A pod started with --advertise-address writes that address and its complete fetched copies
({version: digest}) into its pod record (asympo:{job}:pods); a pod about to fetch a version reads the
records (`peers_holding`) and `materialize` asks one holder (`choose_peer`) before the learner. Nothing
here is trusted for integrity: the receiver hashes every byte against the manifest and the announced
digest, so a wrong or stale advertisement costs one refused stream and a fetch from the learner.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field, ValidationError
from redis.exceptions import RedisError

from asympo.bus import JobKeys
from asympo.jobs.records import PodStatus
from asympo.proto.v1 import bus_pb2
from asympo.weights.manifest import MANIFEST, WeightsError, read_manifest
from asympo.weights.store import local_path
from asympo.weights.transfer import FETCHED_MARK

log = logging.getLogger(__name__)

_VERSION_DIR = re.compile(r"v(\d+)")


class PeerRecord(PodStatus):
    """A pod record with what the pod relays; readers of plain PodStatus ignore the extra fields."""

    advertise_address: str = ""  # host:port of its RolloutService, reachable by peers
    fetched_versions: dict[int, str] = Field(default_factory=dict)  # version -> digest, complete copies


def held_versions(job_dir: Path, cache: dict[tuple[int, int], str] | None = None) -> dict[int, str]:
    """{version: digest} of the complete fetched copies in a job directory of --weights-dir."""
    # A copy is renamed into vN only once received whole and verified, so vN with a manifest is complete.
    # `cache` ((version, manifest mtime) -> digest) spares re-reading manifests on every heartbeat.
    job_dir = Path(job_dir)
    try:
        entries = list(job_dir.iterdir()) if (job_dir / FETCHED_MARK).is_file() else []
    except OSError:
        return {}  # the job's copies were just pruned
    cache = {} if cache is None else cache
    held = {}
    for d in entries:
        match = _VERSION_DIR.fullmatch(d.name)
        if not match:
            continue
        try:
            key = (int(match.group(1)), (d / MANIFEST).stat().st_mtime_ns)
            if key not in cache:
                cache[key] = read_manifest(d).sha256
        except (OSError, WeightsError):
            continue  # being deleted, or not a version: not advertised
        held[key[0]] = cache[key]
    return held


def choose_peer(peers: Sequence[str] | None, pod: str, version: int) -> str | None:
    """The holder this pod asks for `version` (None without holders), fixed per pod and version."""
    # Rendezvous hashing: uniform over the holders, so fetchers spread evenly, and a pod's choice only
    # moves when its holder disappears or a new holder outranks it.
    if not peers:
        return None
    return max(
        peers, key=lambda p: hashlib.blake2b(f"{pod}\0{version}\0{p}".encode(), digest_size=8).digest()
    )


async def peers_holding(redis, pv: bus_pb2.PolicyVersion, pod: str, max_age_s: float = 15.0) -> list[str]:
    """Addresses of the other live pods of the job that advertise a complete copy of `pv` (same digest)."""
    if local_path(pv.uri) is not None:
        return []  # read in place from the shared store: no fetch, so no Redis read on every reload
    try:
        records = await redis.hgetall(JobKeys(pv.job_id).pods)
    except (RedisError, OSError) as exc:
        # Only an optimization is lost: the learner serves the version.
        log.warning("cannot read the pod records; fetching from the learner", extra={"cause": str(exc)})
        return []
    now = time.time()
    out = []
    for raw in records.values():
        try:
            record = PeerRecord.model_validate_json(raw)
        except ValidationError:
            continue
        if (
            record.pod != pod
            and record.advertise_address
            and record.state != "stopped"
            and now - record.heartbeat <= max_age_s
            and record.fetched_versions.get(pv.version) == pv.sha256
        ):
            out.append(record.advertise_address)
    return sorted(out)
