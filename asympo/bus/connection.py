"""Connecting to Redis from a URL (redis://, rediss:// with TLS, passwords), retrying with backoff."""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from asympo.runtime.placeholder_secrets import check_secret

ENV_URL = "ASYMPO_REDIS_URL"
RETRYABLE = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ConnectionError, OSError)


def redis_url(url: str | None = None) -> str:
    """The URL to use: the argument, else $ASYMPO_REDIS_URL; a clear error when neither is set."""
    url = url or os.environ.get(ENV_URL)
    if not url:
        raise RuntimeError(f"no Redis URL: pass one or set {ENV_URL} (e.g. redis://:password@host:6379/0)")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"Redis URL must start with redis://, rediss:// (TLS) or unix://, got {url!r}")
    password = urlsplit(url).password
    if password:
        check_secret(unquote(password), "the password in the Redis URL")
    return url


def connect(
    url: str | None = None, *, retries: int = 8, socket_timeout: float | None = 30.0
) -> aioredis.Redis:
    """An asyncio client whose commands retry on connection loss with capped, jittered backoff.

    A command whose reply is lost is sent again, so it may run twice: every write the bus makes is
    written to be harmless the second time (asympo.bus.flow, ledger, streams).
    """
    # The asyncio Retry: the synchronous one returns the coroutine unawaited and so never retries.
    retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=5.0), retries)
    return aioredis.Redis.from_url(
        redis_url(url),
        retry=retry,
        retry_on_error=list(RETRYABLE),
        socket_keepalive=True,
        socket_connect_timeout=10.0,
        socket_timeout=socket_timeout,
        health_check_interval=30,
        decode_responses=False,
    )
