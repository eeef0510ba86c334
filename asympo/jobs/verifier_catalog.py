"""The reward service's verifier catalog in Redis, so a job naming an unknown verifier is refused when
it is submitted instead of failing once its rollouts reach the reward service.

The reward service registers its verifiers from plugins the gateway never imports, so on start it
writes what it offers to `asympo:verifiers`: a JSON string `{"names": [...], "families": {prefix:
usage}, "published_at": unix seconds}`, replaced whole by every start (the newest service wins). A
name without `:` must be one of `names`; `prefix:<arg>` needs a registered family, whose argument only
the reward service can check (it refuses a bad one when scoring). With no catalog yet (no reward
service has started against this Redis) every name is accepted: refusing them all would block
submissions until the first start, and the reward service still refuses unknown names when scoring.

Imports nothing heavy: the gateway reads this without math-verify, sympy or torch.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

KEY = "asympo:verifiers"


@dataclass(frozen=True)
class VerifierCatalog:
    """Plain verifier names and parametric families (prefix → usage) one reward service offers."""

    names: tuple[str, ...] = ()
    families: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """Every name and family usage, sorted and comma-separated, for error messages."""
        return ", ".join(sorted([*self.names, *self.families.values()]))

    def problem(self, name: str) -> str | None:
        """Why `name` resolves to nothing here, or None when the reward service may score with it."""
        prefix, sep, _ = name.partition(":")
        if (sep and prefix in self.families) or (not sep and name in self.names):
            return None
        return f"unknown verifier {name!r}; the reward service offers: {self.describe()}"

    def to_json(self) -> str:
        """The stored form, stamped with the time it is written."""
        return json.dumps(
            {"names": list(self.names), "families": self.families, "published_at": round(time.time(), 3)}
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> VerifierCatalog:
        """The catalog stored as `raw`; ValueError when it is not one."""
        data: Any = json.loads(raw)
        if not (
            isinstance(data, dict)
            and isinstance(data.get("names"), list)
            and isinstance(data.get("families"), dict)
        ):
            raise ValueError("expected an object with a list 'names' and an object 'families'")
        return cls(
            tuple(str(n) for n in data["names"]), {str(k): str(v) for k, v in data["families"].items()}
        )


async def publish(redis, catalog: VerifierCatalog) -> None:
    """Replace the stored catalog with `catalog` (one SET: readers never see half of one)."""
    await redis.set(KEY, catalog.to_json())


async def read(redis) -> VerifierCatalog | None:
    """The stored catalog, or None when none was published (or what is stored cannot be read)."""
    raw = await redis.get(KEY)
    if raw is None:
        return None
    try:
        return VerifierCatalog.from_json(raw)
    except ValueError as e:
        # A garbled key must not block every submission; the reward service still checks when scoring.
        log.warning("ignoring the unreadable verifier catalog", extra={"key": KEY, "error": str(e)})
        return None


async def check(redis, name: str) -> str | None:
    """Why no reward service offers the verifier `name`, or None if one does or none has said what it offers."""
    catalog = await read(redis)
    return None if catalog is None else catalog.problem(name)
