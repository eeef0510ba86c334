"""Redis key names (docs/architecture.md, "Redis keys"); every service builds keys here."""

from __future__ import annotations

import re
from dataclasses import dataclass

JOBS = "asympo:jobs"
QUEUE = "asympo:queue"
GROUP_ROLLOUT = "rollout"
GROUP_LEARNER = "learner"

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class JobKeys:
    """The keys of one job: its streams, pod hash, de-duplication set and flow counters."""

    job_id: str

    def __post_init__(self) -> None:
        if not _JOB_ID.match(self.job_id):
            raise ValueError(
                f"job id {self.job_id[:60]!r} must match {_JOB_ID.pattern} (it becomes part of Redis keys)"
            )

    def _key(self, name: str) -> str:
        return f"asympo:{self.job_id}:{name}"

    @property
    def prompts(self) -> str:
        """Stream of PromptTask, consumer group `rollout`."""
        return self._key("prompts")

    @property
    def groups(self) -> str:
        """Stream of ScoredGroup, consumer group `learner`."""
        return self._key("groups")

    @property
    def policy(self) -> str:
        """Stream of PolicyVersion."""
        return self._key("policy")

    @property
    def control(self) -> str:
        """Stream of ControlEvent."""
        return self._key("control")

    @property
    def dead(self) -> str:
        """Stream of dead-lettered entries with their reason."""
        return self._key("dead")

    @property
    def skipped(self) -> str:
        """Hash of the entries of plain streams (policy, control, eval-results) already dead-lettered."""
        return self._key("skipped")

    @property
    def pods(self) -> str:
        """Hash pod → PodStatus JSON."""
        return self._key("pods")

    @property
    def claims(self) -> str:
        """Hash prompt_id → id of the groups-stream entry that claimed it (de-duplication)."""
        return self._key("claims")

    @property
    def claim_ages(self) -> str:
        """Sorted set prompt_id → policy version at its claim (old claims are pruned by it)."""
        return self._key("claim-ages")

    @property
    def lease(self) -> str:
        """Hash: the learner lease and its fencing token (asympo.bus.fence)."""
        return self._key("lease")

    @property
    def drops(self) -> str:
        """Stream of the learner's drop records: reason and prompt_ids of prompts never trained."""
        return self._key("drops")

    @property
    def steps(self) -> str:
        """Stream of the learner's per-step records (JSON)."""
        return self._key("steps")

    @property
    def flow(self) -> str:
        """Hash of counters: dispatched, consumed, dropped (admission control)."""
        return self._key("flow")

    @property
    def evals(self) -> str:
        """Stream of EvalTask (held-out evaluation of a version), consumer group `rollout`."""
        return self._key("eval")

    @property
    def eval_results(self) -> str:
        """Stream of EvalResult, read by the learner."""
        return self._key("eval-results")

    def all(self) -> list[str]:
        """Every key of the job (what retention expires); the job's record in `asympo:jobs` stays."""
        names = ("prompts", "groups", "policy", "control", "dead", "pods", "claims", "claim_ages", "lease",
                 "drops", "steps", "flow", "evals", "eval_results", "skipped")  # fmt: skip
        return [getattr(self, name) for name in names] + [self._key("seen")]
