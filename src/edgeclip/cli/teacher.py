"""``edgeclip teacher``: train the reference teacher, inspect any teacher, list the teacher kinds."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeclip.cli.common import device_of, echo_json
from edgeclip.core.prompts import DEFAULT_TEMPLATES

app = typer.Typer(no_args_is_help=True, help="Teachers: train the reference teacher, inspect any teacher.")


@app.command("train")
def teacher_train_reference(
    data: str = typer.Option(..., help="ImageFolder (ROOT/<class>/<image>) to train on"),
    out: Path = typer.Option(
        Path("runs/teacher"), help="output folder (teacher.pt, history.json, last.ckpt)"
    ),
    template: list[str] = typer.Option(
        list(DEFAULT_TEMPLATES), help="prompt template(s); repeat for an ensemble"
    ),
    arch: str = typer.Option("resnet18", help="image tower backbone (any student backbone)"),
    img_size: int = typer.Option(32),
    epochs: int = typer.Option(10),
    batch_size: int = typer.Option(256),
    lr: float = typer.Option(2e-3),
    seed: int = typer.Option(0),
    val: str | None = typer.Option(None, help="ImageFolder for zero-shot top-1 per epoch"),
    max_images: int = typer.Option(0, help="train on a random subset"),
    devices: int = typer.Option(1),
    accelerator: str = typer.Option("auto"),
    resume: bool = typer.Option(False, help="continue from out/last.ckpt"),
):
    """Train the reference-lit teacher: an image tower locked to the real MiniLM text tower (LiT)."""
    from edgeclip.train.reference import ReferenceTeacherConfig, run_reference

    cfg = ReferenceTeacherConfig(
        data=data,
        out=str(out),
        arch=arch,
        templates=template,
        img_size=img_size,
        max_images=max_images,
        val_data=val,
        train={"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "devices": devices,
               "accelerator": accelerator},
    )  # fmt: skip
    hist = run_reference(cfg, resume=resume)
    typer.echo(f"teacher saved: {out / 'teacher.pt'}  (use --teacher reference-lit:{out / 'teacher.pt'})")
    if hist.get("skipped"):
        typer.echo(f"skipped {len(hist['skipped'])} unreadable images, e.g. {hist['skipped'][0]}")


@app.command("info")
def teacher_info(spec: str, device: str = typer.Option("cpu")):
    """Load a teacher and print what edgeclip knows about it."""
    from edgeclip.models.teachers import load_teacher

    t = load_teacher(spec, device=device_of(device))
    echo_json(t.describe())


@app.command("kinds")
def teacher_kinds():
    """List the teacher kinds (registry)."""
    from edgeclip.models.teachers import TEACHERS

    for k, h in TEACHERS.describe().items():
        typer.echo(f"{k:15s} {h}")
