"""Verifiers the reward-service tests load as a plugin (ASYMPO_REWARD_PLUGINS), as a user would."""

import os
import signal
import time

from services.reward.scores import ok
from services.reward.verifiers import register_verifier


@register_verifier("test_sleep")
def sleep(completion: str, reference: str):
    """Sleep for `completion` seconds, then succeed: a slow but well-behaved verifier."""
    time.sleep(float(completion))
    return ok(f"slept {completion} s")


@register_verifier("test_crash")
def crash(completion: str, reference: str):
    """Die the way a broken C extension does."""
    os.kill(os.getpid(), signal.SIGSEGV)


@register_verifier("test_length", isolated=False)
def length(completion: str, reference: str) -> float:
    """A user verifier that returns a bare float: the completion's length relative to the reference's."""
    return len(completion) / max(1, len(reference))
