"""The versioned weight store: write, verify and garbage-collect policy versions on disk.

A version is an HF-format directory `{store}/{job}/v{version}/` (safetensors, config, tokenizer) plus
`asympo_version.json`: per-file sha256, the directory digest carried by PolicyVersion.sha256, and the
version's probes (asympo.weights.probes). Versions appear atomically: written beside, then renamed;
`sweep_leftovers` removes what a killed writer left of that (asympo.weights.leftovers).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from asympo.proto.v1 import bus_pb2
from asympo.runtime import fence_file
from asympo.runtime.durable import fsync_dir, fsync_tree
from asympo.weights.leftovers import DEFAULT_GRACE_S, scratch_dir, sweep_dir, trash_name
from asympo.weights.probes import Probe, compute_probes

MANIFEST = "asympo_version.json"
CHUNK_BYTES = 1 << 20


class WeightsError(RuntimeError):
    """A version that is missing, incomplete or corrupt; the message says which file and why."""


@dataclass
class VersionManifest:
    """What asympo_version.json holds."""

    job_id: str
    version: int
    step: int
    sha256: str
    bytes: int
    files: dict[str, str]
    probes: list[Probe] = field(default_factory=list)
    created_at: float = 0.0


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


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            h.update(block)
    return h.hexdigest()


def content_files(path: Path) -> list[Path]:
    """Every file of a version directory but its manifest, sorted."""
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name != MANIFEST)


def directory_sha256(path: Path) -> tuple[str, int, dict[str, str]]:
    """Digest over sorted (relative path, file sha256) of every file but the manifest; total bytes; per file."""
    path = Path(path)
    files, total = {}, 0
    for f in content_files(path):
        rel = f.relative_to(path).as_posix()
        files[rel] = _file_sha256(f)
        total += f.stat().st_size
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(f"{rel}\0{files[rel]}\n".encode())
    return digest.hexdigest(), total, files


def read_manifest(path: Path) -> VersionManifest:
    """The manifest of a version directory."""
    try:
        data = json.loads((Path(path) / MANIFEST).read_text())
        data["probes"] = [Probe(**p) for p in data.get("probes", [])]
        return VersionManifest(**data)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no {MANIFEST}; not a complete version") from None
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"{path}/{MANIFEST} is unreadable: {exc}") from None


def verify_version(path: Path, sha256: str | None = None) -> VersionManifest:
    """Recompute every file's sha256 and the digest; WeightsError names the first file that differs."""
    path = Path(path)
    if not path.is_dir():
        raise WeightsError(f"version directory {path} does not exist")
    manifest = read_manifest(path)
    digest, total, files = directory_sha256(path)
    for rel in sorted(set(manifest.files) | set(files)):
        if rel not in files:
            raise WeightsError(f"{path}: file {rel} is missing")
        if rel not in manifest.files:
            raise WeightsError(f"{path}: file {rel} is not part of the version")
        if files[rel] != manifest.files[rel]:
            raise WeightsError(
                f"{path}: file {rel} is corrupt (sha256 {files[rel][:12]}… ≠ {manifest.files[rel][:12]}…)"
            )
    if digest != manifest.sha256:
        raise WeightsError(f"{path}: directory digest {digest[:12]}… ≠ manifest {manifest.sha256[:12]}…")
    if sha256 and digest != sha256:
        raise WeightsError(
            f"{path}: digest {digest[:12]}… ≠ the published {sha256[:12]}… (a different version?)"
        )
    return manifest


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
) -> tuple[bus_pb2.PolicyVersion, Path]:
    """Write a version atomically and return its PolicyVersion and directory; older versions beyond `keep` go.

    `state_dict` (e.g. FSDP2's gathered full state dict) is saved instead of the model's own.
    Version 0, the base model, is never garbage-collected: it is where a restarted job starts over.
    An existing directory of the same number is refused unless it holds the same weights, or `replace`
    says it was never announced (a crashed attempt's leftover). With `fence_token`, nothing is renamed
    once a newer learner has claimed the job's directory (asympo.runtime.fence_file). Older versions go
    as gc_versions says.
    """
    target = version_dir(store, job_id, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = scratch_dir(target.parent, target.name, "tmp")
    try:
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if probes is None:
            probes = compute_probes(model, tokenizer)
        digest, total, files = directory_sha256(tmp)
        manifest = VersionManifest(job_id, version, step, digest, total, files, probes, time.time())
        (tmp / MANIFEST).write_text(json.dumps(asdict(manifest), indent=1))
        tmp.chmod(0o755)
        fsync_tree(tmp)
        # A learner that lost the job (a newer one claimed the job's directory) must not replace anything.
        fence_file.check(target.parent, fence_token)
        if target.exists() and replace:
            _discard(target)
        if target.exists():
            existing = read_manifest(target)
            if existing.sha256 != digest:
                raise WeightsError(f"version {version} of job {job_id} already exists with different weights")
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, target)
            fsync_dir(target.parent)  # the rename itself must survive a machine crash
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    gc_versions(store, job_id, keep, protect={version}, grace_s=grace_s)
    sweep_leftovers(store, job_id)  # a predecessor on another machine may have left some, idle only now
    return _announcement(target, manifest), target


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
