"""Failpoints: named places in the learner's commit protocol where a test can make the process die.

`ASYMPO_LEARNER_FAILPOINT=<name>@<step>` makes the learner exit at once (no cleanup, exit code 137,
as after SIGKILL) when it reaches `<name>` during step `<step>`. The crash tests use it to stop the
learner between any two effects of a step and check what a restart makes of it; unset, every call is
a dictionary lookup that finds nothing.
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
