"""Clients of the reward service: RewardClient (blocking, thread-safe) and AsyncRewardClient (asyncio).

with RewardClient("localhost:50051") as reward:     # sends $ASYMPO_GRPC_TOKEN unless given `auth`
    results = reward.score("math", completions, references, deadline_s=5)
    rewards = [r.reward for r in results]

A batch larger than the service's caps (items per request, bytes per request) is sent as several
requests; a completion longer than the service's `max_text_chars` is answered here as `unparsable`
(a reference, as `error`) without being sent, as the service would refuse the whole request for it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import grpc

from asympo.proto.v1 import reward_pb2, reward_pb2_grpc
from asympo.runtime.grpc_auth import ClientAuth

from .scores import STATUSES, ScoreResult, error, unparsable
from .settings import MAX_REQUEST_BYTES, RewardSettings

__all__ = [
    "AsyncRewardClient",
    "RewardClient",
    "RewardServiceError",
    "RewardServiceUnavailable",
    "ScoreResult",
    "channel_options",
]

# What a request without a deadline gets from a service with default settings; sizes the RPC deadline.
SERVICE_DEFAULT_DEADLINE_S = RewardSettings.model_fields["default_deadline_ms"].default / 1000
# The caps of a service with default settings; a client of one configured lower is told so with `max_*`.
SERVICE_MAX_ITEMS = RewardSettings.model_fields["max_items"].default
SERVICE_MAX_TEXT_CHARS = RewardSettings.model_fields["max_text_chars"].default
# Half the service's request limit: leaves room for the envelope and for another encoding's overhead.
REQUEST_BYTES_BUDGET = MAX_REQUEST_BYTES // 2
SERVICE = reward_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name
# gRPC clamps a retry policy's maxAttempts to 5 without a word; more retries are refused instead.
MAX_RETRIES = 4


def _duration(seconds: float) -> str:
    return f"{seconds:.9f}s"


def channel_options(
    retries: int = 4, backoff_s: float = 0.2, options: Sequence[tuple[str, object]] = ()
) -> list[tuple[str, object]]:
    """Options for a RewardService channel: gRPC retries UNAVAILABLE `retries` times; `options` win."""
    if not 0 <= retries <= MAX_RETRIES:
        raise ValueError(
            f"retries must be 0..{MAX_RETRIES} (gRPC allows at most 5 attempts), got {retries!r}"
        )
    if not (backoff_s > 0 and math.isfinite(backoff_s)):
        raise ValueError(f"backoff_s must be a positive number of seconds, got {backoff_s!r}")
    method: dict[str, object] = {"name": [{"service": SERVICE}]}
    if retries:
        # Score is idempotent, so a request the service may have seen is safe to send again. Only
        # UNAVAILABLE is retried (a refused connection, a stopping server), not a bad request nor a
        # spent deadline: the call's deadline already spans every attempt. No waitForReady: a service
        # that is down must fail fast as RewardServiceUnavailable, so the rollout pod leaves its tasks
        # for later instead of holding them a whole deadline. A refused connection fails with
        # UNAVAILABLE and is retried, so a service a second or two from up is still waited for.
        method["retryPolicy"] = {
            "maxAttempts": retries + 1,
            "initialBackoff": _duration(backoff_s),
            # Required by gRPC; set where the doubling ends after `retries` pauses, so it shortens none.
            "maxBackoff": _duration(backoff_s * 2 ** (retries - 1)),
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
    ours = {
        "grpc.enable_retries": 1,
        "grpc.service_config": json.dumps({"methodConfig": [method]}),
        # gRPC stops retrying a call whose request outgrew this buffer (256 KiB by default), and
        # batches of long completions are megabytes: buffer as much as the service accepts.
        "grpc.per_rpc_retry_buffer_size": MAX_REQUEST_BYTES,
    }
    return list({**ours, **dict(options)}.items())


class RewardServiceError(RuntimeError):
    """The reward service refused or failed a request; `code` is the gRPC status code."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


class RewardServiceUnavailable(RewardServiceError):
    """The reward service could not be reached, even after retries."""


class _ClientBase:
    """What both clients share: the channel (with the retry policy), request building, the RPC deadline,
    response checking."""

    _asyncio = False  # which kind of channel the subclass needs

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
        auth: ClientAuth | None = None,
        max_items: int = SERVICE_MAX_ITEMS,
        max_text_chars: int = SERVICE_MAX_TEXT_CHARS,
    ):
        if not isinstance(target, str) or not target:
            raise ValueError(f"target must be 'host:port', got {target!r}")
        if parallelism < 1 or slack_s < 0 or max_items < 1 or max_text_chars < 1:
            raise ValueError("parallelism, max_items and max_text_chars must be >= 1 and slack_s >= 0")
        self.options = channel_options(retries, backoff_s, options)
        self.target = target
        self.parallelism = parallelism
        self.attempts = retries + 1
        self.slack_s = slack_s
        self.default_deadline_s = default_deadline_s
        self.auth = auth or ClientAuth.from_env()
        self.max_items, self.max_text_chars = max_items, max_text_chars
        open_channel = self.auth.aio_channel if self._asyncio else self.auth.channel
        self._channel = open_channel(target, options=self.options)
        self._stub = reward_pb2_grpc.RewardServiceStub(self._channel)

    def _plan(
        self, verifier: str, completions: Sequence[str], references: Sequence[str], deadline_s: float | None
    ) -> tuple[list[ScoreResult | None], list[tuple[list[int], reward_pb2.ScoreRequest, float]]]:
        """The results known without asking (overlong texts), and the requests for the rest: each with
        the indices of its items and its RPC timeout. ValueError on inconsistent input."""
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
        cap = self.max_text_chars
        results: list[ScoreResult | None] = [None] * len(completions)
        chunks: list[tuple[list[int], list[reward_pb2.ScoreItem]]] = []
        size = 0
        for i, (c, r) in enumerate(zip(completions, references)):
            if len(c) > cap:
                results[i] = unparsable(f"completion too long: {len(c)} chars > {cap}; not sent")
                continue
            if len(r) > cap:
                results[i] = error(f"reference too long: {len(r)} chars > {cap}; not sent")
                continue
            item = reward_pb2.ScoreItem(completion=c, reference=r)
            item_size = item.ByteSize() + 8  # the field's tag and length prefix
            if not chunks or len(chunks[-1][0]) >= self.max_items or size + item_size > REQUEST_BYTES_BUDGET:
                chunks.append(([], []))
                size = 0
            chunks[-1][0].append(i)
            chunks[-1][1].append(item)
            size += item_size
        deadline_ms = 0 if deadline_s is None else max(1, round(deadline_s * 1000))
        # The per-item deadline bounds each item's scoring, not its wait for a worker: with `parallelism`
        # workers a batch of n items may take ceil(n / parallelism) deadlines in the worst case.
        per_item = deadline_s if deadline_s is not None else self.default_deadline_s
        requests = []
        for indices, items in chunks:
            timeout = per_item * math.ceil(len(items) / self.parallelism) + self.slack_s
            request = reward_pb2.ScoreRequest(verifier=verifier, items=items, deadline_ms=deadline_ms)
            requests.append((indices, request, timeout))
        return results, requests

    def _fill(self, results: list, indices: list[int], response: reward_pb2.ScoreResponse) -> None:
        """Put one response's scores in their places; RewardServiceError if it broke the contract."""
        for i, result in zip(indices, self._results(response, len(indices))):
            results[i] = result

    def _results(self, response: reward_pb2.ScoreResponse, expected: int) -> list[ScoreResult]:
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

    def _failure(self, e: grpc.RpcError) -> RewardServiceError:
        """The error to raise for a failed RPC."""
        code, details = e.code(), e.details()
        if code == grpc.StatusCode.UNAVAILABLE:
            # gRPC does not say how many attempts it made: fewer when the deadline ran out first.
            attempts = "1 attempt" if self.attempts == 1 else f"at most {self.attempts} attempts"
            return RewardServiceUnavailable(
                f"reward service at {self.target} is unavailable after {attempts}: {details}", code
            )
        return RewardServiceError(f"reward service at {self.target}: {code.name}: {details}", code)


class RewardClient(_ClientBase):
    """Blocking client of RewardService.Score; one instance may be shared by threads."""

    def score(
        self,
        verifier: str,
        completions: Sequence[str],
        references: Sequence[str],
        deadline_s: float | None = None,
    ) -> list[ScoreResult]:
        """Score each completion against its reference; `deadline_s` is per item (None: service default)."""
        results, requests = self._plan(verifier, completions, references, deadline_s)
        for indices, request, timeout in requests:
            try:
                response = self._stub.Score(request, timeout=timeout, metadata=self.auth.metadata)
            except grpc.RpcError as e:
                raise self._failure(e) from None
            self._fill(results, indices, response)
        return results

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncRewardClient(_ClientBase):
    """asyncio client of RewardService.Score; create and use it on one event loop."""

    _asyncio = True

    async def score(
        self,
        verifier: str,
        completions: Sequence[str],
        references: Sequence[str],
        deadline_s: float | None = None,
    ) -> list[ScoreResult]:
        """Score each completion against its reference; `deadline_s` is per item (None: service default)."""
        results, requests = self._plan(verifier, completions, references, deadline_s)
        for indices, request, timeout in requests:
            try:
                response = await self._stub.Score(request, timeout=timeout, metadata=self.auth.metadata)
            except grpc.RpcError as e:
                raise self._failure(e) from None
            self._fill(results, indices, response)
        return results

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
