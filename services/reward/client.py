"""Clients of the reward service: RewardClient (blocking, thread-safe) and AsyncRewardClient (asyncio).

with RewardClient("localhost:50051") as reward:
    results = reward.score("math", completions, references, deadline_s=5)
    rewards = [r.reward for r in results]
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Sequence

import grpc

from asympo.proto.v1 import reward_pb2, reward_pb2_grpc

from .scores import STATUSES, ScoreResult
from .settings import RewardSettings

__all__ = [
    "AsyncRewardClient",
    "RewardClient",
    "RewardServiceError",
    "RewardServiceUnavailable",
    "ScoreResult",
]

# What a request without a deadline gets from a service with default settings; sizes the RPC deadline.
SERVICE_DEFAULT_DEADLINE_S = RewardSettings.model_fields["default_deadline_ms"].default / 1000


class RewardServiceError(RuntimeError):
    """The reward service refused or failed a request; `code` is the gRPC status code."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


class RewardServiceUnavailable(RewardServiceError):
    """The reward service could not be reached, even after retries."""


class _Calls:
    """What both clients share: request building, the RPC deadline, retry policy, response checking."""

    def __init__(
        self,
        target: str,
        parallelism: int = 1,
        retries: int = 4,
        backoff_s: float = 0.2,
        slack_s: float = 5.0,
        default_deadline_s: float = SERVICE_DEFAULT_DEADLINE_S,
    ):
        if not isinstance(target, str) or not target:
            raise ValueError(f"target must be 'host:port', got {target!r}")
        if parallelism < 1 or retries < 0 or backoff_s < 0 or slack_s < 0:
            raise ValueError("parallelism must be >= 1, and retries, backoff_s and slack_s >= 0")
        self.target = target
        self.parallelism = parallelism
        self.retries = retries
        self.backoff_s = backoff_s
        self.slack_s = slack_s
        self.default_deadline_s = default_deadline_s

    def request(
        self, verifier: str, completions: Sequence[str], references: Sequence[str], deadline_s: float | None
    ) -> tuple[reward_pb2.ScoreRequest, float]:
        """The ScoreRequest and the RPC timeout for one batch; ValueError on inconsistent input."""
        if not isinstance(verifier, str) or not verifier:
            raise ValueError(f"verifier must be a non-empty name, got {verifier!r}")
        if isinstance(completions, str) or isinstance(references, str):
            raise ValueError("completions and references must be sequences of strings, not one string")
        if len(completions) != len(references):
            raise ValueError(
                f"got {len(completions)} completions but {len(references)} references: one reference per completion"
            )
        for kind, texts in (("completions", completions), ("references", references)):
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    raise ValueError(f"{kind}[{i}] must be a str, got {type(t).__name__}")
        if deadline_s is not None and not (deadline_s > 0 and math.isfinite(deadline_s)):
            raise ValueError(f"deadline_s must be a positive number of seconds, got {deadline_s!r}")
        items = [reward_pb2.ScoreItem(completion=c, reference=r) for c, r in zip(completions, references)]
        deadline_ms = 0 if deadline_s is None else max(1, round(deadline_s * 1000))
        # The per-item deadline bounds each item's scoring, not its wait for a worker: with `parallelism`
        # workers a batch of n items may take ceil(n / parallelism) deadlines in the worst case.
        per_item = deadline_s if deadline_s is not None else self.default_deadline_s
        rounds = max(1, math.ceil(len(items) / self.parallelism))
        timeout = per_item * rounds + self.slack_s
        return reward_pb2.ScoreRequest(verifier=verifier, items=items, deadline_ms=deadline_ms), timeout

    def results(self, response: reward_pb2.ScoreResponse, expected: int) -> list[ScoreResult]:
        """The response's scores as ScoreResults; RewardServiceError if the service broke the contract."""
        if len(response.scores) != expected:
            raise RewardServiceError(
                f"reward service at {self.target} returned {len(response.scores)} scores for {expected} items"
            )
        out = []
        for s in response.scores:
            if s.status not in STATUSES:
                raise RewardServiceError(
                    f"reward service at {self.target} returned unknown status {s.status!r}"
                )
            out.append(ScoreResult(s.reward, s.status, s.detail))
        return out

    def pause(self, attempt: int) -> float:
        """Seconds to wait before retry `attempt` (1-based): exponential with jitter."""
        return self.backoff_s * (2 ** (attempt - 1)) * random.uniform(0.5, 1.0)

    def failure(self, e: grpc.RpcError, attempts: int) -> RewardServiceError:
        """The error to raise for a failed RPC."""
        code, details = e.code(), e.details()
        if code == grpc.StatusCode.UNAVAILABLE:
            return RewardServiceUnavailable(
                f"reward service at {self.target} is unavailable after {attempts} attempts: {details}", code
            )
        return RewardServiceError(f"reward service at {self.target}: {code.name}: {details}", code)


class RewardClient:
    """Blocking client of RewardService.Score; one instance may be shared by threads."""

    def __init__(
        self,
        target: str,
        *,
        parallelism: int = 1,
        retries: int = 4,
        backoff_s: float = 0.2,
        slack_s: float = 5.0,
        default_deadline_s: float = SERVICE_DEFAULT_DEADLINE_S,
        options: Sequence[tuple[str, object]] = (),
    ):
        self._calls = _Calls(target, parallelism, retries, backoff_s, slack_s, default_deadline_s)
        self.target = target
        self._channel = grpc.insecure_channel(target, options=list(options))
        self._stub = reward_pb2_grpc.RewardServiceStub(self._channel)

    def score(
        self,
        verifier: str,
        completions: Sequence[str],
        references: Sequence[str],
        deadline_s: float | None = None,
    ) -> list[ScoreResult]:
        """Score each completion against its reference; `deadline_s` is per item (None: service default)."""
        request, timeout = self._calls.request(verifier, completions, references, deadline_s)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._stub.Score(request, timeout=timeout)
                return self._calls.results(response, len(completions))
            except grpc.RpcError as e:
                # Score is idempotent, so retrying a request the service may have seen is harmless.
                if e.code() == grpc.StatusCode.UNAVAILABLE and attempt <= self._calls.retries:
                    time.sleep(self._calls.pause(attempt))
                    continue
                raise self._calls.failure(e, attempt) from None

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncRewardClient:
    """asyncio client of RewardService.Score; create and use it on one event loop."""

    def __init__(
        self,
        target: str,
        *,
        parallelism: int = 1,
        retries: int = 4,
        backoff_s: float = 0.2,
        slack_s: float = 5.0,
        default_deadline_s: float = SERVICE_DEFAULT_DEADLINE_S,
        options: Sequence[tuple[str, object]] = (),
    ):
        self._calls = _Calls(target, parallelism, retries, backoff_s, slack_s, default_deadline_s)
        self.target = target
        self._channel = grpc.aio.insecure_channel(target, options=list(options))
        self._stub = reward_pb2_grpc.RewardServiceStub(self._channel)

    async def score(
        self,
        verifier: str,
        completions: Sequence[str],
        references: Sequence[str],
        deadline_s: float | None = None,
    ) -> list[ScoreResult]:
        """Score each completion against its reference; `deadline_s` is per item (None: service default)."""
        request, timeout = self._calls.request(verifier, completions, references, deadline_s)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._stub.Score(request, timeout=timeout)
                return self._calls.results(response, len(completions))
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE and attempt <= self._calls.retries:
                    await asyncio.sleep(self._calls.pause(attempt))
                    continue
                raise self._calls.failure(e, attempt) from None

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
