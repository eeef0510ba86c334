"""Failpoints: named places in the learner's commit protocol where a test can make the process die.

`ASYMPO_LEARNER_FAILPOINT=<name>@<step>` makes the learner exit at once (no cleanup, exit code 137,
as after SIGKILL) when it reaches `<name>` during step `<step>`. The crash tests use it to stop the
learner between any two effects of a step and check what a restart makes of it; unset, every call is
a dictionary lookup that finds nothing.

`ASYMPO_LEARNER_FAULT=<name>@<n>` injects a fault the learner must survive into its n-th optimizer
step attempt (counted by this process, skipped steps included), `<name>@<n>+` into that one and every
later one; several are separated by commas. `nonfinite_grad` makes rank 0's gradient NaN, as a
diverging model would; `nonfinite_loss` makes only rank 0's loss NaN, so the other ranks learn of it
only from rank 0.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

ENV = "ASYMPO_LEARNER_FAILPOINT"

# In the order a step reaches them.
POINTS = (
    "after_train",
    "after_write_version",
    "after_announce",
    "after_commit",
    "checkpoint_written",
    "checkpoint_pointed",
)


def _armed() -> tuple[str, int] | None:
    raw = os.environ.get(ENV, "")
    name, _, step = raw.partition("@")
    if not raw:
        return None
    if name not in POINTS or not step.isdigit():
        raise ValueError(f"{ENV}={raw!r}: expected <point>@<step> with a point among {', '.join(POINTS)}")
    return name, int(step)


ARMED = _armed()


def reach(name: str, step: int) -> None:
    """Die here if the failpoint `name@step` is armed."""
    if ARMED is not None and ARMED == (name, step):
        log.error("failpoint reached: exiting", extra={"failpoint": name, "step": step})
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(137)


FAULT_ENV = "ASYMPO_LEARNER_FAULT"
FAULTS = ("nonfinite_grad", "nonfinite_loss")


def _faults() -> list[tuple[str, int, bool]]:
    out = []
    for raw in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        name, _, at = raw.strip().partition("@")
        onward = at.endswith("+")
        at = at.removesuffix("+")
        if name not in FAULTS or not at.isdigit():
            raise ValueError(
                f"{FAULT_ENV}={raw!r}: expected <fault>@<n> or <fault>@<n>+ with a fault among {', '.join(FAULTS)}"
            )
        out.append((name, int(at), onward))
    return out


ARMED_FAULTS = _faults()


def injected(attempt: int) -> str:
    """The fault armed for this optimizer step attempt (1 for the process's first), or ""."""
    for name, at, onward in ARMED_FAULTS:
        if attempt == at or (onward and attempt > at):
            return name
    return ""
