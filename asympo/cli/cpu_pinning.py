"""`asympo up --cpus service=LIST`: which CPUs each local service may run on."""

from __future__ import annotations

SERVICES = ("reward", "rollout", "learner", "gateway")


def parse_cpus(items: list[str]) -> dict[str, set[int]]:
    """{"rollout": {0}, ...} from ["rollout=0", "learner=1,2-3"]; ValueError names the bad item."""
    pinned: dict[str, set[int]] = {}
    for item in items:
        name, _, spec = item.partition("=")
        if name not in SERVICES or not spec:
            raise ValueError(
                f"--cpus {item!r}: expected SERVICE=CPUS with SERVICE one of {', '.join(SERVICES)}"
            )
        cpus: set[int] = set()
        try:
            for part in spec.split(","):
                first, _, last = part.partition("-")
                cpus.update(range(int(first), int(last or first) + 1))
        except ValueError:
            raise ValueError(f"--cpus {item!r}: CPUS is a list like 0,2-3") from None
        pinned[name] = cpus
    return pinned
