"""The versioned weight store: write and garbage-collect policy versions on disk.

A version is an HF-format directory `{store}/{job}/v{version}/` (safetensors, config, tokenizer) plus
`asympo_version.json` (asympo.weights.manifest): each file's blake3 digest and size, the version digest
carried by PolicyVersion.sha256, and the version's probes (asympo.weights.probes). Versions appear
atomically: written beside, fsynced, then renamed; `sweep_leftovers` removes what a killed writer left of
that (asympo.weights.leftovers). Checking a stored version: asympo.weights.integrity.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlparse

from asympo.proto.v1 import bus_pb2
from asympo.runtime import fence_file
from asympo.runtime.durable import fsync_dir, fsync_tree
from asympo.weights.digests import ALGORITHM
from asympo.weights.integrity import check_version, content_files, hash_contents, verify_version
from asympo.weights.leftovers import DEFAULT_GRACE_S, scratch_dir, sweep_dir, trash_name
from asympo.weights.manifest import MANIFEST, VersionManifest, WeightsError, manifest_text, read_manifest
from asympo.weights.probes import Probe, compute_probes
from asympo.weights.timings import timed

__all__ = [
    "MANIFEST", "VersionManifest", "WeightsError", "announcement", "check_version",
    "content_files", "gc_versions", "list_versions", "local_path", "read_manifest", "sweep_leftovers",
    "verify_version", "version_dir", "write_version",
]  # fmt: skip

# What write_version's `timings` holds, in order: each is the wall-clock time of one stretch of the write.
PHASES = ("save", "hash", "probes", "fsync", "rename", "gc")


def version_dir(store: Path, job_id: str, version: int) -> Path:
    """Where a version lives in a store."""
    return Path(store) / job_id / f"v{version}"


def list_versions(store: Path, job_id: str) -> list[int]:
    """Complete versions of a job in the store, ascending."""
    root = Path(store) / job_id
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("v") and d.name[1:].isdigit() and (d / MANIFEST).is_file():
            found.append(int(d.name[1:]))
    return sorted(found)


def local_path(uri: str) -> Path | None:
    """The directory of a file:// URI (or plain path) if it exists on this machine, else None."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        return None
    path = Path(unquote(parsed.path if parsed.scheme else uri))
    return path if path.is_dir() else None


def write_version(
    store: Path,
    job_id: str,
    version: int,
    step: int,
    model,
    tokenizer,
    *,
    state_dict=None,
    probes: list[Probe] | None = None,
    keep: int = 3,
    replace: bool = False,
    grace_s: float = 0.0,
    fence_token: int | None = None,
    timings: dict[str, float] | None = None,
    collect: bool = True,
) -> tuple[bus_pb2.PolicyVersion, Path]:
    """Write a version atomically and return its PolicyVersion and directory; older versions beyond `keep` go.

    `state_dict` (e.g. FSDP2's gathered full state dict) is saved instead of the model's own.
    Version 0, the base model, is never garbage-collected: it is where a restarted job starts over.
    An existing directory of the same number is refused unless it holds the same weights, or `replace`
    says it was never announced (a crashed attempt's leftover). With `fence_token`, nothing is renamed
    once a newer learner has claimed the job's directory (asympo.runtime.fence_file). Older versions go
    as gc_versions says; `collect=False` leaves that to a later call (a writer publishing many versions
    a second need not list the store every time).

    The probes (a forward pass) run on a thread from the start, and the files' writeback on another once
    they are saved: the CPU serializes and hashes while the model computes and the disk drains.
    `timings` receives the wall-clock seconds of each of PHASES, in order: save (safetensors, config,
    tokenizer), hash (blake3 of the files just written, from page cache), probes (what is left of them),
    fsync (what is left of the writeback, then the manifest and directories), rename (fence check,
    rename, directory fsync) and gc (old versions, leftovers).
    """
    target = version_dir(store, job_id, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = scratch_dir(target.parent, target.name, "tmp")
    background: list[Future] = []
    try:
        probing = None if probes is not None else _on_a_thread(compute_probes, model, tokenizer)
        background.append(probing)
        with timed(timings, "save"):
            model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        flushing = _on_a_thread(_fsync_files, content_files(tmp))
        background.append(flushing)
        with timed(timings, "hash"):
            c = hash_contents(tmp, ALGORITHM)
        with timed(timings, "probes"):
            probes = probes if probing is None else probing.result()
        manifest = VersionManifest(
            job_id, version, step, c.digest, c.bytes, c.files, probes, time.time(), ALGORITHM, c.sizes
        )
        (tmp / MANIFEST).write_text(manifest_text(manifest))
        tmp.chmod(0o755)
        with timed(timings, "fsync"):
            flushing.result()
            fsync_tree(tmp)  # the manifest and the directories; files already flushed cost a syscall
        with timed(timings, "rename"):
            _put_in_place(tmp, target, manifest, replace, fence_token)
    except BaseException:
        for job in filter(None, background):
            job.exception()  # let it finish: the model and the files are not theirs once this returns
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with timed(timings, "gc"):
        if collect:
            gc_versions(store, job_id, keep, protect={version}, grace_s=grace_s)
            sweep_leftovers(
                store, job_id
            )  # a predecessor on another machine may have left some, idle only now
    return _announcement(target, manifest), target


def _fsync_files(files: list[Path]) -> None:
    for f in files:
        with f.open("rb") as fh:
            os.fsync(fh.fileno())


def _on_a_thread(fn, *args) -> Future:
    # fsync waits for the disk and the probes' matrix products release the GIL: both overlap the rest.
    pool = ThreadPoolExecutor(1, thread_name_prefix="asympo-version")
    try:
        return pool.submit(fn, *args)
    finally:
        pool.shutdown(wait=False)


def _put_in_place(tmp: Path, target: Path, manifest: VersionManifest, replace: bool, fence_token) -> None:
    # A learner that lost the job (a newer one claimed the job's directory) must not replace anything.
    fence_file.check(target.parent, fence_token)
    if target.exists() and replace:
        _discard(target)
    if target.exists():
        if not _same_weights(target, manifest):
            raise WeightsError(
                f"version {manifest.version} of job {manifest.job_id} already exists with different weights"
            )
        shutil.rmtree(tmp)
    else:
        os.rename(tmp, target)
        fsync_dir(target.parent)  # the rename itself must survive a machine crash


def _same_weights(existing: Path, manifest: VersionManifest) -> bool:
    old = read_manifest(existing)
    if old.algorithm == manifest.algorithm:
        return old.sha256 == manifest.sha256
    return hash_contents(existing, manifest.algorithm).digest == manifest.sha256  # written before blake3


def _announcement(path: Path, manifest: VersionManifest) -> bus_pb2.PolicyVersion:
    return bus_pb2.PolicyVersion(
        job_id=manifest.job_id, version=manifest.version, uri=Path(path).resolve().as_uri(),
        sha256=manifest.sha256, bytes=manifest.bytes, step=manifest.step, created_at=manifest.created_at,
    )  # fmt: skip


def announcement(path: Path) -> bus_pb2.PolicyVersion:
    """The PolicyVersion announcing a stored version (verified first)."""
    return _announcement(path, verify_version(path))


def _discard(path: Path) -> None:
    # Renamed first: a reader never sees a half-deleted version under its real name.
    trash = trash_name(path)
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def sweep_leftovers(store: Path, job_id: str, grace_s: float = DEFAULT_GRACE_S) -> list[str]:
    """Remove the job's scratch and trash directories no live writer owns (call as a writer starts)."""
    return sweep_dir(Path(store) / job_id, grace_s)


def gc_versions(
    store: Path, job_id: str, keep: int, protect: set[int] = frozenset(), grace_s: float = 0.0
) -> list[int]:
    """Delete all but the newest `keep` versions (never version 0 or `protect`); returns what was deleted.

    A version is also kept until its successor has been out for `grace_s` seconds: a pod that chose
    it while it was the newest may still be loading it (fast jobs publish several versions per second).
    """
    versions = list_versions(store, job_id)
    survivors = set(versions[-keep:]) | {0} | set(protect)
    deleted = []
    for v, successor in zip(versions, versions[1:]):
        if v in survivors or not _older_than(version_dir(store, job_id, successor), grace_s):
            continue
        try:
            _discard(version_dir(store, job_id, v))
        except OSError:
            continue
        deleted.append(v)
    return deleted


def _older_than(path: Path, seconds: float) -> bool:
    if seconds <= 0:
        return True
    try:
        return time.time() - read_manifest(path).created_at > seconds
    except WeightsError:
        return True  # unreadable: nothing a pod could be loading
