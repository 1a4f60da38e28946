"""``edgeclip export``: a student checkpoint -> an edge bundle folder."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgeclip.core.prompts import DEFAULT_TEMPLATES


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_cmd(
        student: Path = typer.Argument(..., help="student checkpoint (student.pt)"),
        out: Path = typer.Option(..., help="bundle folder to write"),
        labels: str = typer.Option(
            ..., help="'cat,dog,car' or @labels.txt: embedded now with the teacher's text tower"
        ),
        template: list[str] = typer.Option(
            list(DEFAULT_TEMPLATES), help="prompt template(s) (ensemble when repeated)"
        ),
        calib: str | None = typer.Option(None, help="calibration images (folder, list, ImageFolder, shards)"),
        calib_images: int = typer.Option(
            200, help="images to take from --calib (a hold-out share checks int8)"
        ),
        holdout: float = typer.Option(
            0.25, help="share of the calibration images held out for the parity check"
        ),
        quant: str = typer.Option(
            "auto", help="auto (static QDQ for CNNs, dynamic for transformers) | static | dynamic | none"
        ),
        per_channel: bool = typer.Option(True, help="per-channel weight scales (static int8)"),
        teacher: str | None = typer.Option(None, help="teacher spec (default: the one the student records)"),
        eval_data: str | None = typer.Option(
            None, "--eval", help="ImageFolder: zero-shot accuracy for the model card"
        ),
        eval_images: int = typer.Option(0, help="evaluate on a random subset of this size (0: all)"),
        overwrite: bool = typer.Option(False, help="replace an existing bundle at --out"),
    ):
        """Export a student to a bundle: ONNX fp32 + int8, labels.json, preprocess.json, manifest, model card."""
        from edgeclip.export.bundle import export_bundle

        man = export_bundle(
            student,
            out,
            labels,
            template,
            calib=calib,
            quant=quant,
            calib_images=calib_images,
            holdout=holdout,
            per_channel=per_channel,
            teacher=teacher,
            eval_data=eval_data,
            eval_images=eval_images,
            overwrite=overwrite,
            log=lambda s: typer.echo(s, err=True),
        )
        summary = {
            "bundle": str(out),
            "models": man["models"],
            "parity": man["parity"],
            "bytes": {k: v["bytes"] for k, v in man["files"].items()},
            "latency_ms": man["latency_ms"],
        }
        if "accuracy" in man:
            summary["accuracy"] = man["accuracy"]
        typer.echo(json.dumps(summary, indent=2))
