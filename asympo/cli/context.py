"""What every `asympo` command shares: the global options and how a command fails."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import typer

from asympo.cli.client import GatewayClient
from asympo.cli.local_stack import LocalStack, StackConfig
from asympo.runtime.api_token import TOKEN_ENV


class Ctx:
    """Options shared by every command."""

    def __init__(self, home: Path, url: str | None, token: str | None):
        self.home = home
        self._url = url
        self._token = token

    def stack(self, **kw) -> LocalStack:
        return LocalStack(StackConfig(home=self.home, **kw), say=lambda m: typer.echo(m, err=True))

    def client(self) -> GatewayClient:
        stack = self.stack()
        url = self._url or stack.gateway_url()
        token = self._token or os.environ.get(TOKEN_ENV)
        if not token:
            saved = self.home / "api-token"
            if not saved.is_file():
                fail(
                    f"no API token: pass --token, set ASYMPO_API_TOKEN, or run `asympo up` (it saves one in {saved})"
                )
            token = saved.read_text().strip()
        return GatewayClient(url, token)


def fail(message: str, code: int = 1):
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def comma_list(kind, value: str | None) -> list | None:
    """A comma-separated option as a list of `kind` (None when the option was not given)."""
    if value is None:
        return None
    try:
        return [kind(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a comma list of {kind.__name__}") from None


def require_extra(command: str, extra: str, modules: tuple[str, ...]) -> None:
    """Fail with the pip command to run when a command needs an extra that is not installed."""
    missing = [m for m in modules if not _importable(m)]
    if missing:
        fail(
            f"`asympo {command}` needs asympo's `{extra}` extra ({', '.join(missing)} not installed): "
            f"pip install 'asympo[{extra}]' (add `cpu` or `gpu` for the vLLM engine)",
            2,
        )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install or a package that refuses to be found
        return False
