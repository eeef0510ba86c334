"""Prompt/answer datasets from JSONL, JSON or Parquet files, or Hugging Face dataset names."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from asympo.jobs.spec import DatasetTaskSpec
from asympo.tasks.base import Problem

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


class DatasetError(ValueError):
    """A dataset that cannot be turned into problems; the message says which record and field."""


def _field_names(record: dict) -> str:
    # Errors reach whoever submitted the job: name a few fields, cut short, never values.
    names = [str(k)[:40] for k in list(record)[:8]]
    return ", ".join(names) + (f", … ({len(record)} in all)" if len(record) > 8 else "")


def load_records(path: str, split: str = "train", subset: str | None = None) -> list[dict[str, Any]]:
    """Records of a local .jsonl/.json/.parquet file, else of the Hugging Face dataset `path` (needs network)."""
    p = Path(path).expanduser()
    if p.suffix in FILE_SUFFIXES:
        if not p.is_file():
            raise DatasetError(f"dataset file not found: {p}")
        return _read_file(p)
    if p.exists():
        raise DatasetError(f"{p} is not a dataset file; use one of {', '.join(FILE_SUFFIXES)}")
    return _read_hub(path, split, subset)


def _read_file(p: Path) -> list[dict[str, Any]]:
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()
    if p.suffix == ".json":
        data = json.loads(p.read_text())
        data = data.get("data", data) if isinstance(data, dict) else data
        if not isinstance(data, list):
            raise DatasetError(f"{p}: expected a JSON list of records (or {{'data': [...]}})")
        return data
    records = []
    with p.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{p}:{lineno}: not valid JSON ({exc.msg})") from None
    return records


def _read_hub(name: str, split: str, subset: str | None) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise DatasetError(
            f"{name!r} is not a local file, and loading Hugging Face datasets needs the 'hub' extra: "
            "pip install 'asympo[hub]'"
        ) from None
    try:
        return list(datasets.load_dataset(name, subset, split=split))
    except Exception as exc:  # datasets raises many types; the user needs the cause, not the type
        raise DatasetError(f"could not load Hugging Face dataset {name!r} (split {split!r}): {exc}") from exc


class DatasetTask:
    """Problems from a dataset: a template renders the prompt, one field holds the reference answer."""

    verifier = "exact"

    def __init__(self, spec: DatasetTaskSpec):
        self.spec = spec
        records = load_records(spec.path, spec.split, spec.subset)
        if spec.limit:
            records = records[: spec.limit]
        problems = self._problems(records, spec.split)
        if spec.heldout_path or spec.heldout_split:
            held = load_records(spec.heldout_path or spec.path, spec.heldout_split or spec.split, spec.subset)
            self._heldout = self._problems(held, "heldout")[: spec.heldout_size]
            self._train = problems
        else:
            if len(problems) <= spec.heldout_size:
                raise DatasetError(
                    f"{spec.path}: {len(problems)} records cannot give {spec.heldout_size} held-out problems "
                    "and leave any for training; lower task.heldout_size or set task.heldout_path"
                )
            order = list(range(len(problems)))
            random.Random("heldout").shuffle(order)
            cut = set(order[: spec.heldout_size])
            self._heldout = [problems[i] for i in sorted(cut)]
            self._train = [p for i, p in enumerate(problems) if i not in cut]

    def _problems(self, records: list[dict[str, Any]], split: str) -> list[Problem]:
        spec, out, seen = self.spec, [], set()
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                raise DatasetError(f"{spec.path}: record {i} is a {type(record).__name__}, not an object")
            if spec.answer_field not in record:
                raise DatasetError(
                    f"{spec.path}: record {i} has no answer field {spec.answer_field!r} (fields: {_field_names(record)})"
                )
            try:
                prompt = spec.template.format_map(record)
            except KeyError as exc:
                raise DatasetError(
                    f"{spec.path}: template field {exc} is not in record {i} (fields: {_field_names(record)})"
                ) from None
            pid = str(record[spec.id_field]) if spec.id_field and spec.id_field in record else f"{split}-{i}"
            if pid in seen:
                raise DatasetError(f"{spec.path}: prompt id {pid!r} repeats (record {i})")
            seen.add(pid)
            out.append(Problem(pid, prompt, str(record[spec.answer_field])))
        if not out:
            raise DatasetError(f"{spec.path}: no records")
        return out

    def heldout(self) -> list[Problem]:
        """The held-out problems."""
        return list(self._heldout)

    def train_stream(self, seed: int) -> Iterator[Problem]:
        """Epoch after epoch, each shuffled by (seed, epoch); ids get an @e<epoch> suffix to stay unique."""
        epoch = 0
        while True:
            order = list(range(len(self._train)))
            random.Random(f"train:{seed}:{epoch}").shuffle(order)
            for i in order:
                p = self._train[i]
                yield Problem(f"{p.prompt_id}@e{epoch}", p.prompt, p.reference)
            epoch += 1
