"""LearnerSettings: the learner's configuration, from ASYMPO_LEARNER_* variables and flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from asympo.runtime.grpc_auth import GrpcSecuritySettings
from asympo.runtime.settings import LogLevel, RedisUrl
from asympo.runtime.settings import load_settings as load_service_settings


class LearnerSettings(GrpcSecuritySettings):
    """Everything `python -m services.learner` can be told; flags override environment variables."""

    model_config = SettingsConfigDict(env_prefix="ASYMPO_LEARNER_", extra="forbid", validate_default=True)

    redis_url: RedisUrl = None
    job_id: str | None = Field(
        None, description="run only this job (default: the active one, else the queue)"
    )
    weight_store: Path = Field(Path(".asympo/weight-store"), description="where versions are written")
    checkpoint_dir: Path = Field(Path(".asympo/checkpoints"), description="where checkpoints are written")
    model_cache: Path | None = Field(None, description="tiny-model cache (default $ASYMPO_CACHE_DIR)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="training device")
    host: str = Field("0.0.0.0", description="address of the gRPC server (rank 0)")
    port: int = Field(50053, ge=0, le=65535, description="gRPC port; 0 picks a free one (logged)")
    metrics_port: int = Field(9103, ge=-1, le=65535, description="Prometheus port; 0 = free one, -1 = off")
    micro_batch_rows: int = Field(
        64, ge=1, description="at most this many responses per forward/backward pass"
    )
    micro_batch_tokens: int = Field(
        1024, ge=1, description="at most this many padded tokens per forward/backward pass (one row at least)"
    )
    torch_threads: int = Field(
        0, ge=0, le=1024,
        description="torch's CPU threads for training; 0 = torch's default (every CPU this process may use)",
    )  # fmt: skip
    keep_versions: int = Field(3, ge=1, description="published versions kept in the weight store")
    version_grace_s: float = Field(
        30.0, ge=0, description="a superseded version is kept this long, for pods still loading it"
    )
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept")
    eval_wait_s: float = Field(
        900.0, ge=0, description="at the end of a job, how long to wait for the pods' final evaluation"
    )
    poll_s: float = Field(0.5, gt=0, description="how often to look for jobs, control events, capacity")
    housekeeping_s: float = Field(
        2.0, gt=0, description="how often to trim consumed stream entries and measure the job's Redis bytes"
    )
    job_max_bytes: int = Field(
        512 * 2**20,
        ge=1,
        description="Redis bytes one job may hold; over it dispatch waits, then the job fails",
    )
    lease_ttl_s: float = Field(
        20.0, gt=0, description="a learner that stops renewing its job lease loses it after this long"
    )
    restart_budget: int = Field(
        5, ge=0, description="times a job may lose its learner without a clean shutdown before it is failed"
    )
    retention_s: float = Field(
        7 * 24 * 3600.0,
        ge=0,
        description="a finished job's streams and counters expire this long after its report",
    )
    exit_when_idle: bool = Field(False, description="exit after one job instead of waiting for the next")
    grace_s: float = Field(60.0, ge=0, description="on SIGTERM, time to finish the step and checkpoint")
    log_level: LogLevel = "INFO"


def load_settings(argv: list[str] | None = None) -> LearnerSettings:
    """Settings from the environment, overridden by the flags in `argv`; SettingsError names bad fields."""
    return load_service_settings(LearnerSettings, "python -m services.learner", "The asympo learner.", argv)
