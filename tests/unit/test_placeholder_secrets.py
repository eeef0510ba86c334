"""The example secrets shipped in the repository are refused at start, wherever a service is given one."""

from __future__ import annotations

from pathlib import Path

import pytest

from asympo.runtime.placeholder_secrets import ALLOW_ENV, check_secret
from asympo.runtime.settings import SettingsError
from services.gateway.settings import load_settings as gateway_settings
from services.learner.settings import load_settings as learner_settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_FILES = [ROOT / "deploy" / "compose" / ".env.example", ROOT / "deploy" / "k8s" / "overlays" / "cpu-dev" / "secrets.env.example"]  # fmt: skip


def shipped_secrets() -> dict[str, str]:
    """Every token and password value written in the repository's example env files."""
    out = {}
    for path in EXAMPLE_FILES:
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.startswith("#") and ("TOKEN" in key or "PASSWORD" in key) and value:
                out[f"{path.name}:{key}"] = value
    return out


def test_the_example_files_hold_secrets_to_check():
    assert len(shipped_secrets()) >= 4


@pytest.mark.parametrize("where", sorted(shipped_secrets()))
def test_every_shipped_example_secret_is_refused(where, monkeypatch):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    with pytest.raises(ValueError, match="example value"):
        check_secret(shipped_secrets()[where], where)


def test_the_gateway_refuses_an_example_token_and_an_example_redis_password(monkeypatch):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    monkeypatch.delenv("ASYMPO_REDIS_URL", raising=False)
    good = "k3b9Qx7w2LmZp4Rt8VnY"
    with pytest.raises(SettingsError, match="API token looks like an example"):
        gateway_settings(["--api-token", "CHANGE-ME-gateway-api-token"])
    with pytest.raises(SettingsError, match="Redis URL looks like an example"):
        gateway_settings(["--api-token", good, "--redis-url", "redis://:CHANGE-ME-redis-password@r:6379/0"])
    monkeypatch.setenv("ASYMPO_REDIS_URL", "redis://:devonlyexampleredispassword@r:6379/0")
    with pytest.raises(SettingsError, match="Redis URL looks like an example"):
        learner_settings([])
    assert (
        gateway_settings(["--api-token", good, "--redis-url", "redis://:Zq81hXv02@r:6379/0"]).api_token
        == good
    )


def test_a_dev_cluster_may_opt_out(monkeypatch):
    monkeypatch.setenv(ALLOW_ENV, "1")
    assert check_secret("dev-only-example-token-change-me", "token") == "dev-only-example-token-change-me"
