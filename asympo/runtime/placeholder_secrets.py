"""Refusing the example secrets that ship in the repository (.env.example, the cpu-dev overlay).

Those values are public: a deployment that forgot to replace one would run with a password anyone can
read on GitHub. Every secret a service is given (the API token, the gRPC token, Redis's password) is
checked at start. Only a throwaway development cluster may opt out, by setting ALLOW_ENV to 1 (the
cpu-dev overlay does, and says why).
"""

from __future__ import annotations

import os
import re

ALLOW_ENV = "ASYMPO_ALLOW_EXAMPLE_SECRETS"
# Words that mark a value as an example to be replaced; matched with case and punctuation ignored, so
# "CHANGE-ME-token" and "change_me" are caught alike.
PLACEHOLDER_WORDS = ("changeme", "example", "placeholder", "replaceme", "yoursecret", "yourtoken")


def examples_allowed() -> bool:
    """Whether the operator opted out of the check (a development cluster only)."""
    return os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes")


def placeholder_word(value: str) -> str | None:
    """The placeholder word `value` contains, if any."""
    folded = re.sub(r"[^a-z0-9]", "", value.lower())
    return next((word for word in PLACEHOLDER_WORDS if word in folded), None)


def check_secret(value: str, what: str) -> str:
    """`value`, or ValueError when it is an example to be replaced (unless ALLOW_ENV is set)."""
    word = placeholder_word(value)
    if word and not examples_allowed():
        raise ValueError(
            f"{what} looks like an example value (it contains {word!r}): generate a real one, e.g. "
            f"`openssl rand -hex 24` (a throwaway dev cluster may set {ALLOW_ENV}=1 instead)"
        )
    return value
