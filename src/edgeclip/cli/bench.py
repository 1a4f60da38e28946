"""Measuring and showing: ``edgeclip bench``, ``edgeclip report`` and ``edgeclip demo``."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeclip.core.errors import EdgeClipError

SECTIONS = ("speed", "train", "accuracy", "fidelity", "energy", "data_path", "gpu")  # = lab.suite.SKIP_NAMES


app = typer.Typer()


@app.command("bench")
def bench_cmd(
    out: Path = typer.Option(
        Path("benchmarks/results"), help="where bench.json (bench_quick.json) and the report go"
    ),
    quick: bool = typer.Option(
        False, "--quick", help="few models, few repetitions, tiny training-cost run (< 3 min)"
    ),
    device: str = typer.Option(
        "cpu", help="cpu | cuda | auto: cuda adds the GPU throughput section (AMP + channels_last)"
    ),
    threads: int = typer.Option(
        0, help="torch / ONNX Runtime threads (0: as set by OMP_NUM_THREADS / torch)"
    ),
    teacher: str | None = typer.Option(None, help="teacher spec of your models (accuracy + Pareto)"),
    student: list[str] = typer.Option([], help="your student checkpoint(s) (repeatable)"),
    data: str | None = typer.Option(None, help="ImageFolder for zero-shot accuracy (default: CIFAR-10 test)"),
    train_data: str | None = typer.Option(
        None, help="images for the training-cost run (default: CIFAR-10 train)"
    ),
    max_images: int = typer.Option(0, help="accuracy images (0: 200 quick / 2000 full)"),
    model: list[str] = typer.Option(
        [],
        help="speed-suite models instead of the default list (clip:ARCH, backbone name, "
        "timm:NAME, ckpt:PATH, teacher:SPEC)",
    ),
    skip: list[str] = typer.Option([], help=f"skip a section ({', '.join(SECTIONS)}); repeatable"),
    lab: Path | None = typer.Option(
        None, help="a lab work folder (benchmarks/artifacts/lab): its teacher and student unless given"
    ),
    report: bool = typer.Option(True, "--report/--no-report", help="also build the HTML/Markdown report"),
    workdir: Path = typer.Option(Path("benchmarks/artifacts/bench"), help="scratch (ONNX files, caches)"),
):
    """Speed, size, training cost, fidelity and energy side by side with the teacher, as JSON + a report."""
    from edgeclip.lab.bench import BenchConfig, run_bench

    cfg = BenchConfig(
        out=str(out),
        quick=quick,
        device=device,
        threads=threads,
        teacher=teacher,
        students=list(student),
        data=data,
        train_data=train_data,
        max_images=max_images,
        models=list(model),
        skip=list(skip),
        workdir=str(workdir),
        report=report,
        lab=str(lab) if lab else None,
    )
    run_bench(cfg, log=typer.echo)


@app.command("report")
def report_cmd(
    bench: Path = typer.Option(
        Path("benchmarks/results/bench.json"), help="a bench JSON written by `edgeclip bench`"
    ),
    out: Path | None = typer.Option(None, help="report folder (default: <bench folder>/report)"),
    results: Path | None = typer.Option(
        None, help="folder of lab results to fold in (default: the bench folder)"
    ),
):
    """Build the one-page report (HTML + Markdown + plots) from a bench JSON and the lab results."""
    from edgeclip.lab.report import build_report

    rep = build_report(
        bench,
        out or bench.parent / ("report_quick" if bench.name == "bench_quick.json" else "report"),
        results_dir=results,
    )
    typer.echo(f"report: {rep['html']}\nmarkdown: {rep['markdown']}")


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("demo_out")),
    mode: str = typer.Option(
        "auto",
        help="auto (photos when MODELS/index.json exists, else synthetic) | photos | synthetic | cifar10",
    ),
    models: Path = typer.Option(Path("models"), help="the shipped models (photos mode)"),
    fast: bool = typer.Option(False, help="tiny budget (used by the tests)"),
):
    """The whole job end to end. photos: the shipped models on real photos (free-text queries,
    captions, speed at 224 px, an int8 bundle, a short distillation); synthetic / cifar10: reference teacher ->
    cache -> distill -> label -> compare, trained from scratch."""
    from edgeclip.lab.demo import run_demo
    from edgeclip.lab.demo_photos import run_photos_demo

    if mode not in ("auto", "photos", "synthetic", "cifar10"):
        raise EdgeClipError(f"unknown demo mode {mode!r} (auto | photos | synthetic | cifar10)")
    if mode == "photos" or (mode == "auto" and (models / "index.json").is_file()):
        run_photos_demo(out, models, fast=fast)
    else:
        run_demo(out, mode=mode, fast=fast)
