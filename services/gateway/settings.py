"""GatewaySettings: the gateway's configuration, from ASYMPO_GATEWAY_* variables and flags."""

from __future__ import annotations

import os

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from asympo.runtime.api_token import TOKEN_ENV
from asympo.runtime.placeholder_secrets import check_secret
from asympo.runtime.settings import LogLevel, RedisUrl
from asympo.runtime.settings import load_settings as load_service_settings


class GatewaySettings(BaseSettings):
    """Everything `python -m services.gateway` can be told; flags override environment variables."""

    model_config = SettingsConfigDict(env_prefix="ASYMPO_GATEWAY_", extra="forbid", validate_default=True)

    redis_url: RedisUrl = None
    api_token: str | None = Field(None, description=f"bearer token clients must send (default ${TOKEN_ENV})")
    host: str = Field("127.0.0.1", description="listen address (0.0.0.0 in a container)")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port; 0 picks a free one (logged)")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body accepted")
    metrics_limit: int = Field(10_000, ge=1, description="most step records one /metrics call returns")
    log_level: LogLevel = "INFO"

    @field_validator("api_token")
    @classmethod
    def _token(cls, value: str | None) -> str:
        value = value or os.environ.get(TOKEN_ENV)
        if not value:
            raise ValueError(f"no API token: set {TOKEN_ENV} (or --api-token); the gateway never runs open")
        if len(value) < 16:
            raise ValueError("the API token must be at least 16 characters")
        return check_secret(value, "the API token")


def load_settings(argv: list[str] | None = None) -> GatewaySettings:
    """Settings from the environment, overridden by the flags in `argv`; SettingsError names bad fields."""
    return load_service_settings(
        GatewaySettings, "python -m services.gateway", "The asympo REST gateway.", argv
    )
