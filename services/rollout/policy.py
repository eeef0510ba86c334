"""Following a job's policy stream: find the newest version, bring its weights to this pod, verify them."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from asympo.proto.v1 import bus_pb2
from asympo.weights.store import VersionManifest, WeightsError, local_path, verify_version
from asympo.weights.transfer import fetch_version

log = logging.getLogger(__name__)


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


def materialize(pv: bus_pb2.PolicyVersion, weights_dir: Path, learner_target: str | None) -> LocalVersion:
    """The version's verified directory: the shared path of its URI if mounted here, else fetched from the learner.

    Blocking (hashes every file); run it in a thread.
    """
    path = local_path(pv.uri)
    try:
        if path is None:
            if not learner_target:
                raise ReloadRefused(
                    "unreachable",
                    f"version {pv.version} lives at {pv.uri}, which is not mounted here, and no learner_target "
                    "is set to fetch it from",
                )
            dest = weights_dir / pv.job_id / f"v{pv.version}"
            if dest.exists():
                shutil.rmtree(dest)  # a leftover of an earlier, failed attempt
            path = fetch_version(
                learner_target, pv.job_id, pv.version, weights_dir, expected_sha256=pv.sha256
            )
        manifest = verify_version(path, pv.sha256)
    except WeightsError as exc:
        raise ReloadRefused("verify", f"version {pv.version} refused: {exc}") from exc
    return LocalVersion(pv.version, pv.sha256, Path(path), manifest)


def prune_fetched(weights_dir: Path, job_id: str, keep: set[Path]) -> None:
    """Delete fetched versions of the job that are no longer needed (shared-volume versions are never touched)."""
    root = weights_dir / job_id
    if not root.is_dir():
        return
    for d in root.iterdir():
        if d.is_dir() and d not in keep and d.name.startswith("v"):
            shutil.rmtree(d, ignore_errors=True)


class RetryGate:
    """Remembers versions that failed, so a broken version is retried with backoff instead of every poll."""

    def __init__(
        self, first_s: float = 2.0, cap_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ):
        self.first_s, self.cap_s, self.clock = first_s, cap_s, clock
        self._failures: dict[tuple[int, str], tuple[int, float]] = {}

    def ready(self, pv: bus_pb2.PolicyVersion) -> bool:
        """Whether this version may be tried now."""
        entry = self._failures.get((pv.version, pv.sha256))
        return entry is None or self.clock() >= entry[1]

    def failed(self, pv: bus_pb2.PolicyVersion) -> None:
        """Record a failure; the wait doubles each time."""
        count = self._failures.get((pv.version, pv.sha256), (0, 0.0))[0] + 1
        wait = min(self.cap_s, self.first_s * 2 ** (count - 1))
        self._failures[(pv.version, pv.sha256)] = (count, self.clock() + wait)
