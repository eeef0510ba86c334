"""Is a stored version what its manifest and its announcement say?

Two checks:
- `verify_version` hashes every file again (full verification): for tests of corruption, pods told to
  verify fully, and versions whose manifest predates blake3 (sha256, no sizes).
- `check_version` trusts the files' content and looks only at what is cheap: the manifest's digest is
  the announced one and is the digest of the manifest's file list and sizes, the directory holds exactly
  those files, and each has its size. It is right where the store is written by the learner alone
  (pods mount it read-only): the learner hashed the bytes as it wrote them, and a file cut short or
  replaced by another version's is still caught. A same-size corruption is not; `verify_version` is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from asympo.weights.digests import ALGORITHM, SHA256, file_digest, version_digest
from asympo.weights.manifest import MANIFEST, VersionManifest, WeightsError, read_manifest


@dataclass
class Contents:
    """A version directory's files as hashed: digest, total bytes, per-file digests and sizes."""

    digest: str
    bytes: int
    files: dict[str, str]
    sizes: dict[str, int]


def content_files(path: Path) -> list[Path]:
    """Every file of a version directory but its manifest, sorted."""
    return sorted(p for p in Path(path).rglob("*") if p.is_file() and p.name != MANIFEST)


def file_sizes(path: Path) -> dict[str, int]:
    """Relative path -> size of every file of a version directory but its manifest (no reading)."""
    path = Path(path)
    return {f.relative_to(path).as_posix(): f.stat().st_size for f in content_files(path)}


def hash_contents(path: Path, algorithm: str = ALGORITHM) -> Contents:
    """Hash every file but the manifest (big ones through mmap and blake3's threads) and the version digest."""
    path = Path(path)
    sizes = file_sizes(path)
    files = {rel: file_digest(path / rel, algorithm) for rel in sizes}
    return Contents(version_digest(files, sizes, algorithm), sum(sizes.values()), files, sizes)


def compare_files(where, manifest: VersionManifest, found: dict, what: str) -> None:
    """WeightsError naming the first file missing, extra, or whose `what` (digest or size) differs."""
    expected = manifest.files if what == "digest" else manifest.sizes
    for rel in sorted(set(expected) | set(found)):
        if rel not in found:
            raise WeightsError(f"{where}: file {rel} is missing")
        if rel not in expected:
            raise WeightsError(f"{where}: file {rel} is not part of the version")
        if found[rel] != expected[rel]:
            if what == "digest":
                raise WeightsError(
                    f"{where}: file {rel} is corrupt ({manifest.algorithm} {found[rel][:12]}… ≠ "
                    f"{expected[rel][:12]}…)"
                )
            raise WeightsError(
                f"{where}: file {rel} is corrupt ({found[rel]} bytes, the manifest says {expected[rel]})"
            )


def check_digest(where, manifest: VersionManifest, digest: str, announced: str | None) -> None:
    """WeightsError unless `digest` is the manifest's and the announced one (when given)."""
    if digest != manifest.sha256:
        raise WeightsError(f"{where}: directory digest {digest[:12]}… ≠ manifest {manifest.sha256[:12]}…")
    if announced and digest != announced:
        raise WeightsError(
            f"{where}: digest {digest[:12]}… ≠ the published {announced[:12]}… (a different version?)"
        )


def _version_manifest(path: Path) -> VersionManifest:
    if not Path(path).is_dir():
        raise WeightsError(f"version directory {path} does not exist")
    return read_manifest(path)


def verify_version(path: Path, sha256: str | None = None) -> VersionManifest:
    """Hash every file again and compare with the manifest (and the announced digest `sha256`)."""
    path = Path(path)
    manifest = _version_manifest(path)
    contents = hash_contents(path, manifest.algorithm)
    compare_files(path, manifest, contents.files, "digest")
    if manifest.algorithm != SHA256:
        compare_files(path, manifest, contents.sizes, "size")
    check_digest(path, manifest, contents.digest, sha256)
    return manifest


def check_version(path: Path, sha256: str | None = None) -> VersionManifest:
    """The trusted check (no hashing of the files, see above); a sha256 manifest is verified fully."""
    path = Path(path)
    manifest = _version_manifest(path)
    if manifest.algorithm == SHA256:
        return verify_version(path, sha256)  # no sizes to check: the old way, every time
    compare_files(path, manifest, file_sizes(path), "size")
    check_digest(path, manifest, version_digest(manifest.files, manifest.sizes, manifest.algorithm), sha256)
    return manifest
