"""RewardSettings: the reward service's configuration, from ASYMPO_REWARD_* variables and command-line flags."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from asympo.runtime.grpc_auth import GrpcSecuritySettings
from asympo.runtime.settings import LogLevel
from asympo.runtime.settings import load_settings as load_service_settings

# The largest ScoreRequest the service accepts, not gRPC's 4 MiB: a request of a few hundred long
# completions is normal here. The client sizes its retry buffer with it.
MAX_REQUEST_BYTES = 64 << 20


def _default_workers() -> int:
    # Cores this process may use, not the machine's; in a container set the worker count explicitly,
    # because CPU limits (cgroups) are not visible here.
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


class RewardSettings(GrpcSecuritySettings):
    """Everything `python -m services.reward` can be told; flags override environment variables."""

    model_config = SettingsConfigDict(env_prefix="ASYMPO_REWARD_", extra="forbid", validate_default=True)

    host: str = Field("0.0.0.0", description="address the gRPC server binds")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one (logged)")
    metrics_port: int = Field(
        9101, ge=-1, le=65535, description="Prometheus port; 0 picks a free one, -1 disables"
    )
    workers: int = Field(default_factory=_default_workers, ge=1, le=256, description="scoring processes")
    start_method: Literal["forkserver", "spawn"] = Field("forkserver", description="how workers are started")
    default_deadline_ms: int = Field(5000, ge=1, description="per-item deadline when a request gives none")
    max_deadline_ms: int = Field(60_000, ge=1, description="longer per-item deadlines are cut to this")
    # 256 Ki characters, ~64k tokens of reasoning. `math` parses only the last \boxed{} (or the last 10k
    # characters), so the cap bounds memory and request size (64 MiB per request), not parser time.
    max_completion_chars: int = Field(262_144, ge=1, description="longer completions are not parsed")
    max_items: int = Field(4096, ge=1, description="items per request; more are refused")
    # The hard cap, above max_completion_chars: longer texts are a bad request, not a model's output to
    # judge. Clients (services.reward.client) answer such completions themselves instead of sending them.
    max_text_chars: int = Field(
        1 << 20, ge=1, description="a completion or reference longer than this refuses the request"
    )
    plugins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="modules (comma-separated) that register more verifiers"
    )
    grace_s: float = Field(10.0, ge=0, description="on SIGTERM, time in-flight requests get to finish")
    log_level: LogLevel = "INFO"

    @field_validator("plugins", mode="before")
    @classmethod
    def _split(cls, value):
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    @model_validator(mode="after")
    def _deadlines(self) -> RewardSettings:
        if self.default_deadline_ms > self.max_deadline_ms:
            raise ValueError(
                f"default_deadline_ms ({self.default_deadline_ms}) exceeds max_deadline_ms ({self.max_deadline_ms})"
            )
        if self.max_text_chars < self.max_completion_chars:
            raise ValueError(
                f"max_text_chars ({self.max_text_chars}) is below max_completion_chars ({self.max_completion_chars})"
            )
        return self


def load_settings(argv: list[str] | None = None) -> RewardSettings:
    """Settings from the environment, overridden by the flags in `argv`; SettingsError names bad fields."""
    return load_service_settings(
        RewardSettings, "python -m services.reward", "The asympo reward-scoring gRPC service.", argv
    )
