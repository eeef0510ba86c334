"""Service settings from ASYMPO_<SERVICE>_* environment variables overridden by command-line flags."""

from __future__ import annotations

import argparse
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


class SettingsError(ValueError):
    """Settings that cannot be used; the message names each bad field and where it came from."""


def _flag_type(annotation):
    # Flags are parsed as text and validated by pydantic; only plain numbers get argparse's help.
    return {int: int, float: float}.get(annotation, str)


def settings_parser(cls: type[BaseSettings], prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one --flag per settings field (default None = not given)."""
    prefix = cls.model_config.get("env_prefix", "")
    p = argparse.ArgumentParser(
        prog=prog, description=f"{description} Every flag can also be set as {prefix}<NAME>."
    )
    for name, info in cls.model_fields.items():
        help_text = f"{info.description or name} (env {prefix}{name.upper()})"
        if info.annotation is bool:
            # A switch: --exit-when-idle turns it on, --no-exit-when-idle off.
            p.add_argument(
                "--" + name.replace("_", "-"),
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
            continue
        p.add_argument(
            "--" + name.replace("_", "-"), type=_flag_type(info.annotation), default=None, help=help_text
        )
    return p


def load_settings(cls: type[S], prog: str, description: str, argv: list[str] | None = None) -> S:
    """Settings from the environment, overridden by the flags in argv; SettingsError names bad fields."""
    args = settings_parser(cls, prog, description).parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if v is not None}
    prefix = cls.model_config.get("env_prefix", "")
    try:
        return cls(**flags)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            field = ".".join(str(x) for x in err["loc"]) or "(settings)"
            source = "--" + field.replace("_", "-") if field in flags else f"{prefix}{field.upper()}"
            lines.append(f"  {field} ({source}): {err['msg']}")
        raise SettingsError(f"invalid {prog} settings:\n" + "\n".join(lines)) from None
