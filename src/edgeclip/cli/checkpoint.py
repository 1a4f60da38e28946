"""``edgeclip checkpoint``: checkpoint files (convert those of earlier releases to safetensors)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, help="Checkpoints: convert files of earlier releases.")


@app.command("convert")
def checkpoint_convert(
    src: Path = typer.Argument(..., help="an edgeclip checkpoint (any kind, any release)"),
    out: Path = typer.Option(..., help="the safetensors checkpoint to write"),
    half: bool = typer.Option(
        False, "--half", help="store the weights as float16 (half the size; a teacher keeps its id)"
    ),
):
    """Re-save an edgeclip checkpoint as safetensors (tensors + JSON, readable without unpickling anything)."""
    from edgeclip.core.checkpoint import convert_checkpoint

    typer.echo(f"{out}: {convert_checkpoint(src, out, half=half)}")
