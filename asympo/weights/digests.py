"""Content digests of a version's files, and the version digest over them.

Versions are hashed with blake3 (several GB/s, and multithreaded on big files); versions written before
blake3 was adopted name sha256 in their manifest and still verify. The version digest is 64 hex
characters either way (both algorithms give 32 bytes), which is what PolicyVersion.sha256 carries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import blake3

BLAKE3 = "blake3"
SHA256 = "sha256"  # versions written before blake3: still verified, never written
ALGORITHM = BLAKE3  # what versions are written with
ALGORITHMS = (BLAKE3, SHA256)
BLOCK_BYTES = 1 << 20
# Files at least this large are hashed through mmap with blake3's threads: below it the threads cost more
# than they save.
THREADED_BYTES = 4 << 20


class UnknownAlgorithm(ValueError):
    """A digest algorithm this asympo does not know (a manifest from a newer one, or a damaged one)."""


def new_hasher(algorithm: str, threaded: bool = True):
    """A hashlib-style object (`update`, `hexdigest`) of `algorithm`; blake3's uses its threads if `threaded`."""
    if algorithm == BLAKE3:
        return blake3.blake3(max_threads=blake3.blake3.AUTO if threaded else 1)
    if algorithm == SHA256:
        return hashlib.sha256()
    raise UnknownAlgorithm(f"unknown digest algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of one file; a big file is read through mmap, so a file just written hashes from page cache."""
    path = Path(path)
    if algorithm == BLAKE3 and path.stat().st_size >= THREADED_BYTES:
        h = new_hasher(BLAKE3)
        h.update_mmap(path)
        return h.hexdigest()
    h = new_hasher(algorithm, threaded=False)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(BLOCK_BYTES), b""):
            h.update(block)
    return h.hexdigest()


def version_digest(files: Mapping[str, str], sizes: Mapping[str, int], algorithm: str) -> str:
    """The digest of a version from its per-file digests (and, for blake3, sizes), in sorted path order.

    blake3 versions bind each file's size into the digest, so a manifest's sizes are as trustworthy as
    the announced digest; sha256 versions keep the format they were written with.
    """
    h = new_hasher(algorithm, threaded=False)
    for rel in sorted(files):
        if algorithm == SHA256:
            h.update(f"{rel}\0{files[rel]}\n".encode())
        else:
            h.update(f"{rel}\0{sizes[rel]}\0{files[rel]}\n".encode())
    return h.hexdigest()
