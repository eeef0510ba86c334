"""ScoreResult: what a verifier says about one completion, and the five statuses it may carry."""

from __future__ import annotations

from dataclasses import dataclass

OK, WRONG, UNPARSABLE, TIMEOUT, ERROR = "ok", "wrong", "unparsable", "timeout", "error"
STATUSES = (OK, WRONG, UNPARSABLE, TIMEOUT, ERROR)

# Details travel back with every item; long ones (a stack trace, a whole parsed answer) only cost bandwidth.
MAX_DETAIL_CHARS = 300


@dataclass(frozen=True)
class ScoreResult:
    """The reward of one completion, its status (ok|wrong|unparsable|timeout|error) and a short detail."""

    reward: float
    status: str
    detail: str = ""

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {self.status!r}")


def clip_detail(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """`text` cut to `limit` characters, with an ellipsis when it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def ok(detail: str = "", reward: float = 1.0) -> ScoreResult:
    """A correct answer."""
    return ScoreResult(reward, OK, clip_detail(detail))


def wrong(detail: str = "", reward: float = 0.0) -> ScoreResult:
    """An answer that was read but does not match the reference."""
    return ScoreResult(reward, WRONG, clip_detail(detail))


def unparsable(detail: str) -> ScoreResult:
    """No answer could be read from the completion: reward 0."""
    return ScoreResult(0.0, UNPARSABLE, clip_detail(detail))


def timed_out(detail: str) -> ScoreResult:
    """Scoring did not finish within its deadline: reward 0."""
    return ScoreResult(0.0, TIMEOUT, clip_detail(detail))


def error(detail: str) -> ScoreResult:
    """Scoring itself failed (bad reference, a verifier bug, a crashed worker): reward 0."""
    return ScoreResult(0.0, ERROR, clip_detail(detail))
