"""Service settings from ASYMPO_<SERVICE>_* environment variables overridden by command-line flags."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from pydantic import AfterValidator, Field, ValidationError
from pydantic_settings import BaseSettings, CliSettingsSource

from asympo.runtime.process_exit import leave
from asympo.runtime.telemetry import setup_logging

S = TypeVar("S", bound=BaseSettings)


class SettingsError(ValueError):
    """Settings that cannot be used; the message names each bad field and where it came from."""


class ServiceStartError(RuntimeError):
    """A service cannot start for a reason its message explains (bad plugin, unusable configuration)."""


def _log_level(value: str) -> str:
    if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"unknown log level {value!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value.upper()


# The log_level field every service has.
LogLevel = Annotated[str, AfterValidator(_log_level), Field(description="DEBUG, INFO, WARNING, ERROR")]


def _usable_redis_url(value: str | None) -> str | None:
    from asympo.bus.connection import ENV_URL, redis_url

    # Checked at start (scheme, no example password) whether it came as a flag or from $ASYMPO_REDIS_URL;
    # unset stays None, and the service that needs Redis says so when it connects.
    return redis_url(value) if value or os.environ.get(ENV_URL) else None


# The redis_url field of the services that use Redis.
RedisUrl = Annotated[
    str | None, AfterValidator(_usable_redis_url), Field(description="Redis URL (default $ASYMPO_REDIS_URL)")
]


def load_settings(cls: type[S], prog: str, description: str, argv: list[str] | None = None) -> S:
    """Settings from the environment, overridden by the flags in argv; SettingsError names bad fields.

    The flags are pydantic-settings' CLI source: one --kebab-case flag per field (--flag/--no-flag for
    switches), parsed as text and validated by pydantic like the environment variables.
    """
    prefix = cls.model_config.get("env_prefix", "")
    parser = argparse.ArgumentParser(
        prog=prog, description=f"{description} Every flag can also be set as {prefix}<NAME>."
    )
    cli = CliSettingsSource(
        cls, root_parser=parser, cli_kebab_case=True, cli_implicit_flags=True, cli_parse_none_str="null"
    )
    source = cli(args=sys.argv[1:] if argv is None else argv)
    flags = source()
    try:
        return cls(_cli_settings_source=source)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            field = ".".join(str(x) for x in err["loc"]) or "(settings)"
            where = "--" + field.replace("_", "-") if field in flags else f"{prefix}{field.upper()}"
            lines.append(f"  {field} ({where}): {err['msg']}")
        raise SettingsError(f"invalid {prog} settings:\n" + "\n".join(lines)) from None


def _exit_quietly(signum, frame):
    # Nothing is started yet (no loop, no children): leave at once. Raising SystemExit instead could
    # land inside the event loop's construction and print a traceback from its half-built remains.
    leave(0)


def run_service(
    service: str,
    load: Callable[[list[str] | None], BaseSettings],
    serve: Callable[[BaseSettings], Awaitable[int]],
    argv: list[str] | None = None,
) -> int:
    """A service's `main`: settings (exit 2 when invalid), JSON logging, then `serve` until it returns.

    `serve` imports the heavy parts itself, after logging is set up. A ServiceStartError is a start-up
    problem the service explains (logged, exit 2); OSError (a port in use) and anything else exit 1.
    """
    try:
        settings = load(argv)
    except SettingsError as e:
        print(e, file=sys.stderr)
        return 2
    log = setup_logging(service, settings.log_level)
    # Until the event loop takes the signals over, a SIGTERM/SIGINT (e.g. during slow imports) means
    # "never mind": exit 0 as after any other stop, not by the default disposition.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_quietly)
    log.info("starting")  # from here on a signal stops the service cleanly
    try:
        return asyncio.run(serve(settings))
    except ServiceStartError as e:
        log.error(str(e))
        return 2
    except OSError as e:
        log.error(f"cannot start the {service.split('-')[0]} service: {e}")
        return 1
    except Exception:
        log.exception(f"the {service.split('-')[0]} service failed")
        return 1
