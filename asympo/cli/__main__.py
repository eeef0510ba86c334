"""python -m asympo.cli: the same as the `asympo` command."""

from asympo.cli.app import app

app()
