"""A pod receiving a version over FetchWeights: each file is written and hashed as its chunks arrive, so the
version is verified without reading it back.

Chunks come in order, file by file, the manifest last (as asympo.weights.transfer sends them). Files are
hashed with blake3, the algorithm versions are written with; a version whose manifest names another
(sha256, written before blake3) is verified by reading the files back once.
"""

from __future__ import annotations

from pathlib import Path

from asympo.proto.v1 import learner_pb2
from asympo.weights.digests import ALGORITHM, new_hasher, version_digest
from asympo.weights.integrity import check_digest, compare_files, verify_version
from asympo.weights.manifest import MANIFEST, VersionManifest, WeightsError, read_manifest


def safe_relative(rel: str) -> Path:
    """A chunk's path, refused unless it stays inside the version directory."""
    p = Path(rel)
    if not rel or p.is_absolute() or ".." in p.parts:
        raise WeightsError(f"refusing chunk path {rel!r}: it must stay inside the version directory")
    return p


class VersionReceiver:
    """Writes a FetchWeights stream under `root` and checks it: `take` each chunk, then `finish`, always `close`."""

    def __init__(
        self, root: Path, expected: str | None = None, algorithm: str = ALGORITHM, source: str = "the learner"
    ):
        self.root, self.expected, self.algorithm, self.source = Path(root), expected, algorithm, source
        self.received: dict[str, int] = {}
        self.announced: dict[str, int] = {}
        self._handles = {}
        self._hashers = {}

    def take(self, chunk: learner_pb2.WeightChunk) -> None:
        """Write and hash one chunk; WeightsError on a chunk out of place or of another version."""
        rel = safe_relative(chunk.path)
        name = rel.as_posix()  # "./x" and "x" are one file: the offset check catches a second start
        if self.expected and chunk.sha256 and chunk.sha256 != self.expected:
            raise WeightsError(
                f"{self.source} sends version digest {chunk.sha256[:12]}…, not the announced "
                f"{self.expected[:12]}… (a different version?)"
            )
        written = self.received.get(name, 0)
        if chunk.offset != written:
            raise WeightsError(f"{name}: chunk at offset {chunk.offset}, expected {written}")
        if self.announced.setdefault(name, chunk.file_size) != chunk.file_size:
            raise WeightsError(
                f"{name}: announced as {self.announced[name]} bytes, then as {chunk.file_size}"
            )
        if name not in self._handles:
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            self._handles[name] = (self.root / rel).open("wb")
            if name != MANIFEST:
                self._hashers[name] = new_hasher(self.algorithm)
        self._handles[name].write(chunk.data)
        if name in self._hashers:
            self._hashers[name].update(chunk.data)
        self.received[name] = written + len(chunk.data)

    def close(self) -> None:
        """Close every file written."""
        for fh in self._handles.values():
            fh.close()
        self._handles.clear()

    def finish(self, source: str) -> VersionManifest:
        """The received version's manifest once everything arrived whole and matches it and the announced digest."""
        self.close()
        if MANIFEST not in self.received:
            raise WeightsError(f"{source} sent no {MANIFEST}")
        for name, got in self.received.items():
            if got != self.announced[name]:
                raise WeightsError(
                    f"{name}: announced {self.announced[name]} bytes, received {got} (the stream was cut short?)"
                )
        manifest = read_manifest(self.root)
        if manifest.algorithm != self.algorithm:
            return verify_version(self.root, self.expected)  # hashed with another algorithm: read back once
        where = f"version {manifest.version} from {source}"
        digests = {name: h.hexdigest() for name, h in self._hashers.items()}
        compare_files(where, manifest, digests, "digest")
        compare_files(where, manifest, {n: self.received[n] for n in digests}, "size")
        digest = version_digest(manifest.files, manifest.sizes, manifest.algorithm)
        check_digest(where, manifest, digest, self.expected)
        return manifest
