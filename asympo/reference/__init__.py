"""The single-process reference loop (`python -m asympo.reference`): ground truth and research tool."""

from asympo.reference.loop import RunResult, VersionRing, run_reference

__all__ = ["RunResult", "VersionRing", "run_reference"]
