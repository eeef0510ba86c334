"""Following a job's policy stream: find the newest version, bring its weights to this pod, verify them."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

from asympo.proto.v1 import bus_pb2
from asympo.runtime.grpc_auth import ClientAuth
from asympo.weights.leftovers import sweep_dir
from asympo.weights.store import (
    VersionManifest,
    WeightsError,
    check_version,
    local_path,
    read_manifest,
    verify_version,
)
from asympo.weights.timings import timed
from asympo.weights.transfer import FETCHED_MARK, fetch_version

from .peers import choose_peer

log = logging.getLogger(__name__)

# FETCHED_MARK marks a job directory of --weights-dir as this pod's fetched copies: only marked
# directories are ever pruned (or served to peers), so a --weights-dir pointed at the shared store by
# mistake loses nothing.


class ReloadRefused(RuntimeError):
    """A version this pod will not serve; `reason` labels the failure metric."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class LocalVersion:
    """A verified version on this machine."""

    version: int
    sha256: str
    path: Path
    manifest: VersionManifest
    fetched: bool = False  # streamed into --weights-dir (else read in place from the shared store)
    source: str = "store"  # store (read in place), learner or peer: who sent the bytes
    source_target: str = ""  # host:port of the learner or peer pod that sent them


def materialize(
    pv: bus_pb2.PolicyVersion,
    weights_dir: Path,
    learner_target: str | None,
    auth: ClientAuth | None = None,
    *,
    full_verify: bool = False,
    timings: dict[str, float] | None = None,
    peers: Sequence[str] | None = None,
    pod: str = "",
) -> LocalVersion:
    """The version's checked directory: the shared path of its URI if mounted here, else fetched from a
    peer pod that holds it, else (or if the peer fails) from the learner.

    In place, the manifest is trusted (asympo.weights.integrity.check_version: its digest is the
    announced one and every file has its size; the store is written by the learner alone); `full_verify`
    hashes every file instead. Fetched, the bytes are hashed as they arrive, whoever sends them.
    `peers`: host:port of pods advertising a complete copy of this version (services.rollout.peers);
    one is chosen by `pod` (this pod's name) and the version, and a stream it cannot or will not send
    whole and right is replaced by one fetch from the learner. `timings` receives "fetch" (0 in place;
    streaming, writing and hashing when fetched) and "verify" (the check in place; reading the received
    manifest when fetched). Blocking: run it in a thread.
    """
    path, source, target = local_path(pv.uri), "store", ""
    try:
        with timed(timings, "fetch"):
            if path is None:
                path, source, target = _fetch(pv, weights_dir, learner_target, auth, peers, pod)
        with timed(timings, "verify"):
            if full_verify:
                manifest = verify_version(path, pv.sha256)
            elif source != "store":
                manifest = read_manifest(path)  # fetch_version checked it against pv.sha256
            else:
                manifest = check_version(path, pv.sha256)
    except WeightsError as exc:
        raise ReloadRefused("verify", f"version {pv.version} refused: {exc}") from exc
    fetched = source != "store"
    return LocalVersion(pv.version, pv.sha256, Path(path), manifest, fetched, source, target)


def _fetch(
    pv: bus_pb2.PolicyVersion, weights_dir: Path, learner_target: str | None, auth, peers, pod: str
) -> tuple[Path, str, str]:
    peer = choose_peer(peers, pod, pv.version)
    if not learner_target and peer is None:
        raise ReloadRefused(
            "unreachable",
            f"version {pv.version} lives at {pv.uri}, which is not mounted here, and no learner_target "
            "is set to fetch it from",
        )
    dest = weights_dir / pv.job_id / f"v{pv.version}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    (dest.parent / FETCHED_MARK).touch()
    sweep_dir(dest.parent)  # partial downloads of a killed predecessor
    if dest.exists():
        shutil.rmtree(dest)  # a leftover of an earlier, failed attempt
    if peer is not None:
        try:
            path = fetch_version(
                peer, pv.job_id, pv.version, weights_dir, expected_sha256=pv.sha256, auth=auth, from_peer=True
            )
        except WeightsError as exc:
            if not learner_target:
                raise
            # A peer down, pruning the copy, or sending bytes that fail the hash: the learner has it.
            log.warning(
                "fetch from a peer failed; fetching from the learner",
                extra={"version": pv.version, "peer": peer, "cause": str(exc)},
            )
        else:
            log.info("version fetched", extra={"version": pv.version, "source": "peer", "from": peer})
            return path, "peer", peer
    path = fetch_version(
        learner_target, pv.job_id, pv.version, weights_dir, expected_sha256=pv.sha256, auth=auth
    )
    log.info("version fetched", extra={"version": pv.version, "source": "learner", "from": learner_target})
    return path, "learner", learner_target


def prune_fetched(weights_dir: Path, job_id: str, keep: set[Path] = frozenset()) -> None:
    """Delete this pod's fetched copies of the job but `keep`, and leftover downloads (never the shared store)."""
    root = weights_dir / job_id
    if not (root / FETCHED_MARK).is_file():
        return
    for d in root.iterdir():
        if d.is_dir() and d not in keep and d.name.startswith("v"):
            shutil.rmtree(d, ignore_errors=True)
    sweep_dir(root)
    if not keep:
        shutil.rmtree(root, ignore_errors=True)


def fetched_jobs(weights_dir: Path) -> list[str]:
    """Jobs of which this pod keeps fetched copies in `weights_dir`."""
    if not weights_dir.is_dir():
        return []
    return sorted(d.name for d in weights_dir.iterdir() if (d / FETCHED_MARK).is_file())


class RetryGate:
    """Remembers what failed (a version, or any key), so it is retried with backoff instead of every poll."""

    def __init__(
        self, first_s: float = 2.0, cap_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ):
        self.first_s, self.cap_s, self.clock = first_s, cap_s, clock
        self._failures: dict[Hashable, tuple[int, float]] = {}

    @staticmethod
    def _key(what: bus_pb2.PolicyVersion | Hashable) -> Hashable:
        return (what.version, what.sha256) if isinstance(what, bus_pb2.PolicyVersion) else what

    def ready(self, what: bus_pb2.PolicyVersion | Hashable) -> bool:
        """Whether this may be tried now."""
        entry = self._failures.get(self._key(what))
        return entry is None or self.clock() >= entry[1]

    def failed(self, what: bus_pb2.PolicyVersion | Hashable) -> None:
        """Record a failure; the wait doubles each time."""
        key = self._key(what)
        count = self._failures.get(key, (0, 0.0))[0] + 1
        wait = min(self.cap_s, self.first_s * 2 ** (count - 1))
        self._failures[key] = (count, self.clock() + wait)

    def succeeded(self, what: bus_pb2.PolicyVersion | Hashable) -> None:
        """Forget the failures: the next one waits `first_s` again."""
        self._failures.pop(self._key(what), None)
