"""`asympo_version.json`: what a version directory holds, how it was hashed, and its probes.

New manifests say `"algorithm": "blake3"` and give the version digest as `"digest"` with every file's
digest and size; manifests written before blake3 have `"sha256"` and no sizes, and read as
`algorithm == "sha256"`. In memory the digest stays `VersionManifest.sha256`, the name of the
PolicyVersion field that carries it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from asympo.weights.digests import ALGORITHM, ALGORITHMS, BLAKE3, SHA256
from asympo.weights.probes import Probe

MANIFEST = "asympo_version.json"


class WeightsError(RuntimeError):
    """A version that is missing, incomplete or corrupt; the message says which file and why."""


@dataclass
class VersionManifest:
    """What asympo_version.json holds."""

    job_id: str
    version: int
    step: int
    sha256: str  # the version digest, of `algorithm` (named after PolicyVersion.sha256, which carries it)
    bytes: int
    files: dict[str, str]  # relative path -> file digest
    probes: list[Probe] = field(default_factory=list)
    created_at: float = 0.0
    algorithm: str = ALGORITHM
    sizes: dict[str, int] = field(default_factory=dict)  # relative path -> bytes (none in sha256 manifests)

    @property
    def digest(self) -> str:
        """The version digest (the same as `sha256`, whatever the algorithm)."""
        return self.sha256


def manifest_text(manifest: VersionManifest) -> str:
    """The manifest as written to disk."""
    data = asdict(manifest)
    data["digest"] = data.pop("sha256")
    return json.dumps(data, indent=1)


def parse_manifest(text: str | bytes, where: str) -> VersionManifest:
    """A manifest from its JSON; WeightsError (naming `where`) if it is not one this asympo can check."""
    try:
        data = json.loads(text)
        if "digest" in data:
            data["sha256"] = data.pop("digest")
        else:
            data.setdefault("algorithm", SHA256)  # written before manifests named their algorithm
        data["probes"] = [Probe(**p) for p in data.get("probes", [])]
        manifest = VersionManifest(**data)
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"{where} is unreadable: {exc}") from None
    if manifest.algorithm not in ALGORITHMS:
        raise WeightsError(
            f"{where} was hashed with {manifest.algorithm!r}, which this asympo cannot check "
            f"(it knows {', '.join(ALGORITHMS)}): written by a newer version?"
        )
    if manifest.algorithm == BLAKE3 and set(manifest.sizes) != set(manifest.files):
        raise WeightsError(f"{where} does not give the size of every file")
    return manifest


def read_manifest(path: Path) -> VersionManifest:
    """The manifest of a version directory."""
    where = f"{path}/{MANIFEST}"
    try:
        text = (Path(path) / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise WeightsError(f"{path}: no {MANIFEST}; not a complete version") from None
    return parse_manifest(text, where)
