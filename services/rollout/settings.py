"""RolloutSettings: a rollout pod's configuration, from ASYMPO_ROLLOUT_* variables and flags."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, FilePath
from pydantic_settings import SettingsConfigDict

from asympo.runtime.grpc_auth import GrpcSecuritySettings
from asympo.runtime.settings import LogLevel, RedisUrl
from asympo.runtime.settings import load_settings as load_service_settings


def _default_pod_name() -> str:
    # On Kubernetes the hostname is the pod name: stable across container restarts of the same pod,
    # so a restarted container takes back its own pending entries.
    return os.environ.get("POD_NAME") or socket.gethostname()


class RolloutSettings(GrpcSecuritySettings):
    """Everything `python -m services.rollout` can be told; flags override environment variables."""

    model_config = SettingsConfigDict(env_prefix="ASYMPO_ROLLOUT_", extra="forbid", validate_default=True)

    pod: str = Field(default_factory=_default_pod_name, min_length=1, description="consumer name of this pod")
    redis_url: RedisUrl = None
    reward_target: str = Field("127.0.0.1:50051", description="host:port of the reward service")
    learner_target: str | None = Field(None, description="host:port of the learner, for FetchWeights")
    tls_ca: FilePath | None = Field(
        None, description="PEM CA bundle of the reward and learner certificates: call them over TLS"
    )
    job_id: str | None = Field(None, description="serve only this job (default: the active job)")
    engine: Literal["auto", "vllm", "hf"] = Field("auto", description="generation engine")
    device: Literal["cpu", "cuda"] = Field("cpu", description="device of the hf engine")
    dtype: str = Field("auto", description="engine dtype (auto, float32, bfloat16, float16)")
    max_model_len: int | None = Field(None, ge=16, description="vLLM context length (default: the model's)")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vLLM GPU memory share")
    kv_cache_gib: float | None = Field(
        None,
        gt=0,
        description="vLLM KV cache size in GiB (default: 1 on CPU, from gpu_memory_utilization on GPU)",
    )
    host: str = Field("0.0.0.0", description="address of the gRPC server")
    port: int = Field(50052, ge=0, le=65535, description="gRPC port; 0 picks a free one (logged)")
    metrics_port: int = Field(9102, ge=-1, le=65535, description="Prometheus port; 0 = free one, -1 = off")
    batch_prompts: int = Field(16, ge=1, description="prompt groups per engine call")
    # Caps of the Generate RPC (smoke tests, ad-hoc evaluation); the pod's own work never goes through it.
    generate_max_prompts: int = Field(1024, ge=1, description="Generate: prompts per request")
    generate_max_completions: int = Field(4096, ge=1, description="Generate: prompts × n per request")
    generate_max_new_tokens: int = Field(8192, ge=1, description="Generate: largest max_new_tokens")
    generate_max_prompt_chars: int = Field(65_536, ge=1, description="Generate: characters per prompt")
    claim_idle_s: float = Field(60.0, gt=0, description="take over entries idle this long from dead pods")
    max_deliveries: int = Field(5, ge=1, description="dead-letter a prompt after this many deliveries")
    reward_deadline_s: float = Field(10.0, gt=0, description="per-item deadline for reward scoring")
    weights_dir: Path = Field(Path(".asympo/weights"), description="where fetched weights are kept")
    advertise_address: str = Field(
        "",
        pattern=r"^$|^\S+:\d+$",
        description="host:port at which peer pods reach this pod's gRPC to fetch the versions it fetched "
        "(peer relay); empty: serve no peers",
    )
    probe_tolerance: float | None = Field(
        None,
        gt=0,
        description="max |Δ logprob| on probe tokens after a reload (default 2e-3 fp32, 0.1 bf16/fp16)",
    )
    poll_s: float = Field(1.0, gt=0, description="how often to look for a job, versions and control events")
    heartbeat_s: float = Field(5.0, gt=0, description="how often PodStatus is refreshed")
    grace_s: float = Field(30.0, ge=0, description="on SIGTERM, time the batch in flight gets to finish")
    log_level: LogLevel = "INFO"


def load_settings(argv: list[str] | None = None) -> RolloutSettings:
    """Settings from the environment, overridden by the flags in `argv`; SettingsError names bad fields."""
    return load_service_settings(
        RolloutSettings, "python -m services.rollout", "An asympo rollout pod.", argv
    )
