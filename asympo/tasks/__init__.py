"""Tasks: problems with reference answers, synthetic or from datasets."""

from __future__ import annotations

from asympo.jobs.spec import ArithmeticTaskSpec, DatasetTaskSpec
from asympo.tasks.answers import exact_match, normalize_answer
from asympo.tasks.arithmetic import ArithmeticTask
from asympo.tasks.base import Problem, Task
from asympo.tasks.dataset import DatasetError, DatasetTask, load_records


def build_task(spec: ArithmeticTaskSpec | DatasetTaskSpec) -> ArithmeticTask | DatasetTask:
    """The task a job spec's `task` section describes."""
    if isinstance(spec, ArithmeticTaskSpec):
        return ArithmeticTask(spec)
    return DatasetTask(spec)


__all__ = [
    "ArithmeticTask",
    "DatasetError",
    "DatasetTask",
    "Problem",
    "Task",
    "build_task",
    "exact_match",
    "load_records",
    "normalize_answer",
]
