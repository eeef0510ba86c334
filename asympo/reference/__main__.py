"""python -m asympo.reference: the same as `asympo reference`."""

import typer

from asympo.cli.runs import reference

typer.run(reference)
