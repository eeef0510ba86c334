"""Reading torch.distributed.checkpoint files without unpickling arbitrary objects.

DCP stores a checkpoint's index (`.metadata`) with pickle, and its own reader unpickles it in full: a
file planted in the checkpoint directory could then run code in the learner. This reader resolves only
the classes such an index is made of (DCP's metadata records, torch dtypes, sizes and layouts) and
refuses anything else, so a hostile or corrupt index is an error like any other torn checkpoint.
"""

from __future__ import annotations

import pickle
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
_NAMED = {
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
}


class UnsafeCheckpointIndex(pickle.UnpicklingError):
    """A checkpoint index that names something other than checkpoint metadata."""


class _IndexUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = (
            module in _MODULES
            or (module, name) in _NAMED
            or (module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout)))
        )
        if not allowed or name.startswith("__"):
            raise UnsafeCheckpointIndex(f"checkpoint index refers to {module}.{name}, which is not metadata")
        return super().find_class(module, name)


class IndexCheckedReader(FileSystemReader):
    """FileSystemReader whose `.metadata` may hold only checkpoint metadata (see the module docstring)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as stream:
            metadata = _IndexUnpickler(stream).load()
        if not isinstance(metadata, Metadata):
            raise UnsafeCheckpointIndex(f"checkpoint index holds a {type(metadata).__name__}, not Metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata
